"""Run folders: ``<output_dir>/<name>/<timestamp>/`` with the resolved ``config.yaml``, ``checkpoints/`` and results,
and the ``best`` / ``last`` references to the newest run's checkpoints."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from framework.core.errors import UserError


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
    ``models:/`` URIs: ``framework.infer.bundle.resolve_bundle``)."""
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
