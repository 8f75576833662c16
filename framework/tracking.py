"""MLflow wiring: one run per ``fit``/``test``, the resolved config as an artifact, component names as params."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from framework.errors import ConfigError


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"encoder": {"name": "x"}}}`` → ``{"model.encoder.name": "x"}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def make_logger(cfg: dict[str, Any], run_dir: Path, run_name: str):
    """An ``MLFlowLogger`` for ``cfg['tracking']`` (None when tracking is disabled).

    Artifacts go under the run folder's ``mlartifacts`` unless the store is a server: a sqlite store must not
    scatter ``./mlruns`` folders into the working directory.
    """
    tc = cfg["tracking"]
    if not tc["enabled"]:
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    uri = tc["uri"]
    if uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks")):
        raise ConfigError(
            f"tracking.uri '{uri}': MLflow's file store is deprecated and raises; use sqlite:///mlruns.db or http://…"
        )
    artifact_location = None
    if uri.startswith("sqlite:"):
        artifact_location = (Path(os.path.abspath(run_dir)).parent.parent / "mlartifacts").as_uri()
    logger = MLFlowLogger(
        experiment_name=tc["experiment"],
        run_name=tc["run_name"] or run_name,
        tracking_uri=uri,
        artifact_location=artifact_location,
        log_model=False,
    )
    return logger


def log_run_files(logger, cfg: dict[str, Any], files: list[Path]) -> None:
    """Log flattened params (every slot's component name among them) and files as artifacts."""
    if logger is None:
        return
    logger.log_hyperparams(flatten(cfg))
    for path in files:
        logger.experiment.log_artifact(logger.run_id, str(path))
