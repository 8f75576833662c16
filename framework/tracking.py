"""MLflow wiring: one run per ``fit``/``test``, the resolved config as an artifact, component names as params."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
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


TRACKED_PACKAGES = ("torch", "lightning", "transformers", "peft", "timm", "mlflow")


def _git_state() -> dict[str, str]:
    """Commit and dirty flag of the checkout the code runs from (empty outside a git checkout)."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {}
    if not commit:
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}


def run_tags() -> dict[str, str]:
    """Tags every run carries: code version, package versions, host and device."""
    import torch

    tags = _git_state()
    for package in TRACKED_PACKAGES:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    tags["host"] = socket.gethostname()
    tags["platform"] = platform.platform()
    tags["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return tags


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
        tags=run_tags(),
    )
    return logger


def log_run_files(logger, cfg: dict[str, Any], files: list[Path]) -> None:
    """Log flattened params (every slot's component name among them) and files as artifacts."""
    if logger is None:
        return
    logger.log_hyperparams(flatten(cfg))
    for path in files:
        logger.experiment.log_artifact(logger.run_id, str(path))
