"""What every run records besides its metrics (the config as flat params, tags naming the code and the machine) and
the store it goes to by default."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

LOCAL_STORE = "sqlite:///mlruns.db"


def default_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the sqlite store in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or LOCAL_STORE


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
    repo = Path(__file__).resolve().parents[2]

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
