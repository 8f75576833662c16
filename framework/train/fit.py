"""``fit``: train an experiment config into a run folder (config.yaml, checkpoints, fit.json) and an MLflow run."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_only

from framework.core.config import save_config
from framework.core.errors import UserError
from framework.core.weights import CheckpointWeights
from framework.data.datamodule import ReasoningDataModule
from framework.track.mlflow_run import log_run_files, make_logger, remember_run, remembered_run, tracking_callbacks
from framework.track.run_dirs import new_run_dir, resolve_checkpoint
from framework.train.checkpointing import ResumeState, checkpoint_callbacks
from framework.train.strategies import (
    fit_trainer_kwargs,
    run_dir_for_children,
    seed_everything,
    shared_run_dir,
    trainer_kwargs,
)
from framework.train.task import SegEarthTask


def fit(
    cfg: dict[str, Any],
    resume: str | None = None,
    callbacks: list[L.Callback] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Train; returns the run folder (config.yaml, checkpoints/{best,last}.ckpt, fit.json).

    ``resume``: ``last`` (the newest run's last.ckpt), ``best`` or a checkpoint path: continue that run, in its run
    folder, from the checkpoint's weights, optimiser, scheduler, random states and position in the training order
    (``framework.train.checkpointing``). ``callbacks``: more Lightning callbacks (a sweep trial's pruning), ``tags``:
    more tags on the MLflow run. Under DDP every process runs this function; all write into one run folder
    (``framework.train.strategies.shared_run_dir``) and only global rank 0 writes files, prints and logs to MLflow.
    """
    kwargs = trainer_kwargs(cfg)
    data = ReasoningDataModule(cfg["data"], seed=cfg["seed"])
    data.dataset("train"), data.dataset("val")  # fail on bad data before building a model
    ckpt_path = resolve_checkpoint(cfg, resume) if resume else None
    resumed = CheckpointWeights(ckpt_path) if ckpt_path else None  # a truncated file fails here
    run_dir = shared_run_dir(cfg, new_run_dir, ckpt_path)
    writer = rank_zero_only.rank == 0  # from the launcher's environment, known before the process group exists
    # before the model: an unreachable server fails fast
    # a resumed fit continues the MLflow run of the fit it resumes
    previous_run = remembered_run(run_dir, cfg) if ckpt_path else None
    logger = make_logger(cfg, run_dir, f"{cfg['name']}-fit", tags, run_id=previous_run)
    seed_everything(cfg)
    try:
        task = SegEarthTask(cfg)
        if resumed is not None:  # a checkpoint of another config: one line, and the run's config.yaml is kept
            resumed.model_state(task.model)
            del resumed
    except UserError:
        if writer and ckpt_path is None:  # a new run folder that holds nothing yet
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    config_path = save_config(cfg, run_dir / "config.yaml") if writer else None
    every_n_steps = cfg["checkpoint"]["every_n_steps"]
    all_callbacks: list[L.Callback] = [*checkpoint_callbacks(run_dir / "checkpoints", every_n_steps), ResumeState()]
    if logger is not None:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    all_callbacks += tracking_callbacks(cfg, logger)
    all_callbacks += callbacks or []
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=logger if logger is not None else False,
        callbacks=all_callbacks,
        **fit_trainer_kwargs(kwargs, task.model),
    )
    if writer:
        log_run_files(logger, cfg, [config_path])
        remember_run(logger, run_dir)
    started = time.time()
    with warnings.catch_warnings(), run_dir_for_children(run_dir):
        # frozen slots are kept in eval mode on purpose (no dropout / DropPath on a frozen part)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(task, datamodule=data, ckpt_path=ckpt_path, weights_only=False)
    if trainer.is_global_zero:
        summary = {"wall_s": round(time.time() - started, 1), "val": task.results.get("val", {})}
        if ckpt_path is not None:
            summary["resumed_from"] = str(ckpt_path)
        if task.skipped_steps:
            summary["nonfinite_skipped_steps"] = task.skipped_steps
        (run_dir / "fit.json").write_text(json.dumps(summary, indent=2))
        print(f"run folder: {run_dir}")
    return run_dir
