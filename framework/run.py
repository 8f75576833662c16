"""What the CLI commands do: fit, validate and test an experiment config, with run folders and MLflow."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

from framework.config import save_config
from framework.errors import ConfigError, UserError


def _trainer_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    import inspect

    import lightning as L

    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks", "default_root_dir"}
    unknown = sorted(set(cfg["trainer"]) - valid)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {difflib.get_close_matches(k, valid, 1)[0]}?)" if difflib.get_close_matches(k, valid, 1) else k for k in unknown]
        raise ConfigError(f"trainer: unknown Lightning Trainer argument(s): {', '.join(hints)}")
    return dict(cfg["trainer"])


def new_run_dir(cfg: dict[str, Any]) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg["output_dir"]) / cfg["name"]
    run_dir = base / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def resolve_checkpoint(cfg: dict[str, Any], ckpt: str) -> Path:
    """A checkpoint path, or ``best`` / ``last`` of the newest run of this experiment (model bundles and
    ``models:/`` URIs: ``framework.bundle.resolve_bundle``)."""
    if ckpt in ("best", "last"):
        base = Path(cfg["output_dir"]) / cfg["name"]
        runs = sorted(p for p in base.glob("*/checkpoints") if (p / f"{ckpt}.ckpt").exists()) if base.is_dir() else []
        if not runs:
            raise UserError(f"no '{ckpt}' checkpoint under {base}/*/checkpoints (run 'segearth fit' first)")
        return runs[-1] / f"{ckpt}.ckpt"
    path = Path(ckpt)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    return path


def _seed(cfg: dict[str, Any]) -> None:
    import lightning as L

    L.seed_everything(cfg["seed"], workers=True, verbose=False)


def fit(cfg: dict[str, Any], resume: str | None = None) -> Path:
    """Train; returns the run folder (config.yaml, checkpoints/{best,last}.ckpt, fit.json).

    ``resume``: ``last`` (the newest run's last.ckpt), ``best`` or a checkpoint path: continue that run, in its run
    folder, from the checkpoint's weights, optimiser, scheduler, random states and position in the training order
    (``framework.checkpointing``). Under DDP every process runs this function; all write into one run folder
    (``framework.training.shared_run_dir``) and only global rank 0 writes files, prints and logs to MLflow.
    """
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.utilities import rank_zero_only

    from framework.checkpointing import ResumeState, checkpoint_callbacks
    from framework.data.datamodule import ReasoningDataModule
    from framework.sweep import trial_callbacks
    from framework.task import SegEarthTask
    from framework.tracking import log_run_files, make_logger, tracking_callbacks
    from framework.training import fit_trainer_kwargs, run_dir_for_children, shared_run_dir

    trainer_kwargs = _trainer_kwargs(cfg)
    data = ReasoningDataModule(cfg["data"], seed=cfg["seed"])
    data.dataset("train"), data.dataset("val")  # fail on bad data before building a model
    ckpt_path = resolve_checkpoint(cfg, resume) if resume else None
    run_dir = shared_run_dir(cfg, new_run_dir, ckpt_path)
    writer = rank_zero_only.rank == 0  # from the launcher's environment, known before the process group exists
    config_path = save_config(cfg, run_dir / "config.yaml") if writer else None
    logger = make_logger(cfg, run_dir, f"{cfg['name']}-fit")  # before the model: an unreachable server fails fast
    _seed(cfg)
    task = SegEarthTask(cfg)
    every_n_steps = cfg["checkpoint"]["every_n_steps"]
    callbacks: list[L.Callback] = [*checkpoint_callbacks(run_dir / "checkpoints", every_n_steps), ResumeState()]
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += tracking_callbacks(cfg, logger)
    callbacks += trial_callbacks()  # a sweep trial's pruning callback (none outside `segearth sweep`)
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        **fit_trainer_kwargs(trainer_kwargs, task.model),
    )
    if writer:
        log_run_files(logger, cfg, [config_path])
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


def _check_collectable(trainer) -> None:
    """Evaluation results live in the processes that computed them: strategies that run the work in spawned or
    forked children of this process return only logged scalars, not the per-sample results."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ConfigError(
            "trainer.strategy: spawned or forked workers cannot return evaluation results; "
            "evaluate on several devices with strategy=ddp (or under torchrun/SLURM)"
        )


def evaluate(cfg: dict[str, Any], ckpt: str | None, stage: str = "test", out: str | None = None) -> dict:
    """``validate`` or ``test`` a checkpoint; ``test`` also runs the shuffled-question control (config
    ``eval.shuffled_control``) and writes results.json + results.md and ``eval.overlays`` prediction overlays.

    Under DDP (``trainer.devices`` > 1, strategy ``ddp``) every process evaluates its share and gets the
    gathered results; only rank 0 makes folders, writes, prints and logs to MLflow.
    """
    import lightning as L
    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from framework.data.datamodule import ReasoningDataModule
    from framework.overlays import write_overlays
    from framework.report import results_table
    from framework.task import SegEarthTask
    from framework.tracking import log_run_files, make_logger

    passed = ("accelerator", "devices", "num_nodes", "precision", "strategy")
    trainer_kwargs = {k: v for k, v in _trainer_kwargs(cfg).items() if k in passed}
    trainer = L.Trainer(logger=False, enable_checkpointing=False, **trainer_kwargs)
    _check_collectable(trainer)
    data = ReasoningDataModule(cfg["data"], seed=cfg["seed"], shuffled_control_seed=cfg["eval"]["shuffle_seed"])
    data.dataset(stage if stage == "test" else "val")
    from framework.bundle import resolve_bundle

    bundle = resolve_bundle(ckpt, cfg["tracking"]["uri"]) if ckpt else None
    if bundle is not None:  # a bundle brings its own model; the experiment config gives data and evaluation
        cfg = {**cfg, "model": bundle.config["model"]}
    ckpt_path = resolve_checkpoint(cfg, ckpt) if ckpt and bundle is None else None
    # rank from the launcher's environment (DDP re-runs this command in every process): only rank 0 writes
    writer = rank_zero_only.rank == 0
    logger = None
    if writer:
        out_dir = Path(out) if out else (ckpt_path.parent.parent if ckpt_path else new_run_dir(cfg))
        out_dir.mkdir(parents=True, exist_ok=True)
        logger = make_logger(cfg, out_dir, f"{cfg['name']}-{stage}")
        trainer.logger = logger
    _seed(cfg)
    task = SegEarthTask(cfg)
    if bundle is not None:
        bundle.load_into(task.model)
    if ckpt_path is not None:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        task.on_load_checkpoint(checkpoint)
        task.load_state_dict(checkpoint["state_dict"])
    started = time.time()
    with warnings.catch_warnings():
        # the metrics count a sample repeated by the distributed sampler's padding once
        warnings.filterwarnings("ignore", message=r"Using `DistributedSampler` with the dataloaders")
        if stage == "validate":
            trainer.validate(task, dataloaders=data.val_dataloader(), verbose=False)
            results = {"val": task.results["val"]}
        else:
            trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)
            if cfg["eval"]["shuffled_control"]:
                task.test_prefix = "test_shuffled"
                trainer.test(task, dataloaders=data.shuffled_test_dataloader(), verbose=False)
            results = dict(task.results)
    results["wall_s"] = round(time.time() - started, 1)
    results["checkpoint"] = str(ckpt_path) if ckpt_path else ckpt
    if not writer:
        return results
    json_path = out_dir / f"results_{stage}.json" if stage != "test" else out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2))
    table = results_table(results, cfg)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(table + "\n")
    print(table)
    print(f"results: {json_path}")
    log_run_files(logger, cfg, [json_path, md_path])
    if stage == "test" and task.overlay_predictions:
        overlay_dir = out_dir / "overlays"
        write_overlays(data.dataset("test"), task.overlay_predictions, overlay_dir)
        print(f"overlays: {overlay_dir}")
        if logger is not None:
            logger.experiment.log_artifacts(logger.run_id, str(overlay_dir), artifact_path="overlays")
    return results
