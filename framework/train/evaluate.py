"""``validate`` / ``test`` of trained weights: the task's metrics over a split, the shuffled-question and
image-blind controls, results files, overlays and an MLflow run."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.utilities import rank_zero_only

from framework.core.errors import ConfigError, DataError
from framework.core.weights import WeightsSource
from framework.data.datamodule import ReasoningDataModule
from framework.eval.overlays import write_overlays
from framework.eval.report import results_table
from framework.track.evaluations import INDEX, list_evaluations, new_evaluation_dir, point_latest, record_evaluation
from framework.track.mlflow_run import log_run_files, make_logger
from framework.track.run_dirs import new_run_dir
from framework.train.strategies import seed_everything, trainer_kwargs
from framework.train.task import SegEarthTask

STAGES = ("validate", "test")


def _check_collectable(trainer: L.Trainer) -> None:
    """Evaluation results live in the processes that computed them: strategies that run the work in spawned or
    forked children of this process return only logged scalars, not the per-sample results."""
    if isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
        raise ConfigError(
            "trainer.strategy: spawned or forked workers cannot return evaluation results; "
            "evaluate on several devices with strategy=ddp (or under torchrun/SLURM)"
        )


def evaluate(
    cfg: dict[str, Any], weights: WeightsSource | None, stage: str = "test", out: str | Path | None = None
) -> dict:
    """``validate`` or ``test`` ``weights`` (None: the model as built from the config); ``test`` also runs the
    shuffled-question control (config ``eval.shuffled_control``) and, for a model with visual tokens, the
    image-blind control (``eval.image_blind_control``: each question answered with another image's visual tokens),
    and writes results.json + results.md and ``eval.overlays`` prediction overlays into an evaluation folder of
    its own (``framework.track.evaluations``) under ``out``, else the weights' run folder, else a new one.

    Under DDP (``trainer.devices`` > 1, strategy ``ddp``) every process evaluates its share and gets the
    gathered results; only rank 0 makes folders, writes, prints and logs to MLflow.
    """
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
    passed = ("accelerator", "devices", "num_nodes", "precision", "strategy")
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, **{k: v for k, v in trainer_kwargs(cfg).items() if k in passed}
    )
    _check_collectable(trainer)
    data = ReasoningDataModule(cfg["data"], seed=cfg["seed"], shuffled_control_seed=cfg["eval"]["shuffle_seed"])
    data.dataset(stage if stage == "test" else "val")
    if weights is not None and weights.model_config is not None:
        # weights that bring their own model (a bundle); the experiment config gives data and evaluation
        cfg = {**cfg, "model": weights.model_config}
    # rank from the launcher's environment (DDP re-runs this command in every process): only rank 0 writes
    writer = rank_zero_only.rank == 0
    logger = None
    if writer:
        run_dir = weights.run_dir if weights is not None else None
        out_dir = Path(out) if out else (run_dir or new_run_dir(cfg))
        out_dir.mkdir(parents=True, exist_ok=True)
        logger = make_logger(cfg, out_dir, f"{cfg['name']}-{stage}")
        trainer.logger = logger
    seed_everything(cfg)
    task = SegEarthTask(cfg)
    if weights is not None:
        weights.load_into(task.model)
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
            if cfg["eval"]["image_blind_control"] and task.model.compressor is not None:
                try:
                    blind = data.image_blind_test_dataloader()
                except DataError as error:  # a split of one image: the control has no other image to use
                    if writer:
                        print(f"{error}: not run")
                else:
                    task.test_prefix = "test_image_blind"
                    trainer.test(task, dataloaders=blind, verbose=False)
            results = dict(task.results)
    results["wall_s"] = round(time.time() - started, 1)
    results["checkpoint"] = weights.source if weights is not None else None
    if not writer:
        return results
    split = cfg["data"]["test_split" if stage == "test" else "val_split"]
    folder = new_evaluation_dir(out_dir, stage, split)
    name = "results.json" if stage == "test" else f"results_{stage}.json"
    json_path = folder / name
    json_path.write_text(json.dumps(results, indent=2))
    table = results_table(results, cfg)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(table + "\n")
    print(table)
    latest = {name: json_path, md_path.name: md_path}
    log_run_files(logger, cfg, [json_path, md_path])
    if stage == "test":
        overlay_dir = folder / "overlays" if task.overlay_predictions else None
        if overlay_dir is not None:
            write_overlays(data.dataset("test"), task.overlay_predictions, overlay_dir)
            print(f"overlays: {overlay_dir}")
            if logger is not None:
                logger.experiment.log_artifacts(logger.run_id, str(overlay_dir), artifact_path="overlays")
        latest["overlays"] = overlay_dir  # None: this test drew none, so no link to an older test's
    metrics = results["test"]["metrics"] if stage == "test" else results["val"]
    record_evaluation(out_dir, folder, {
        "stage": stage, "split": split, "data_root": str(cfg["data"]["root"]), "checkpoint": results["checkpoint"],
        "giou": metrics.get("giou"), "ciou": metrics.get("ciou"), "n": metrics.get("n"),
    })
    point_latest(out_dir, latest)
    print(f"results: {json_path} (also {out_dir / name}: the newest)")
    print_evaluations(out_dir)
    return results


def print_evaluations(run_dir: Path) -> None:
    """One line per evaluation kept in ``run_dir`` (``framework.track.evaluations``), oldest first."""
    entries = list_evaluations(run_dir)
    print(f"evaluations of {run_dir} ({run_dir / 'evaluations' / INDEX}):")
    for e in entries:
        scores = " / ".join("–" if e.get(k) is None else f"{e[k]:.3f}" for k in ("giou", "ciou"))
        print(f"  {e['evaluation']}  {e['time']}  {e['split']} of {e['data_root']} (n={e.get('n')}), "
              f"checkpoint {e['checkpoint']}: gIoU / cIoU {scores}")
