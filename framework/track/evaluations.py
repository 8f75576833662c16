"""Every evaluation of a run folder kept: ``segearth validate`` / ``test`` write into a folder of their own,
``<run>/evaluations/NNN-<stage>-<split>/`` (results, table, overlays), append a line to
``<run>/evaluations/index.jsonl`` (stage, split, data root, checkpoint, time, headline scores), and point
``<run>/results.json`` (``results_validate.json`` for validate), its ``.md`` and ``overlays`` at the newest one, so
an earlier result is never overwritten and the plain names still read the latest."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

INDEX = "index.jsonl"
LATEST_NAMES = ("results.json", "results.md", "results_validate.json", "results_validate.md", "overlays")


def new_evaluation_dir(run_dir: Path, stage: str, split: str) -> Path:
    """A new, empty ``run_dir/evaluations/NNN-<stage>-<split>`` (NNN one above the highest there). The first time,
    results a run folder holds from before evaluations were kept apart move to ``evaluations/000-before``."""
    root = run_dir / "evaluations"
    if not root.is_dir():
        earlier = [run_dir / name for name in LATEST_NAMES if (run_dir / name).exists()]
        if earlier:
            (root / "000-before").mkdir(parents=True)
            for path in earlier:
                os.replace(path, root / "000-before" / path.name)
    root.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name.split("-", 1)[0]) for p in root.iterdir() if p.name[:3].isdigit()), default=0)
    while True:
        folder = root / f"{number:03d}-{stage}-{split}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:  # another evaluation of this run took the number first
            number += 1


def record_evaluation(run_dir: Path, folder: Path, entry: dict[str, Any]) -> None:
    """Append ``entry`` (with the folder and the time) to the run's evaluation index."""
    line = {"evaluation": folder.name, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **entry}
    with open(run_dir / "evaluations" / INDEX, "a", encoding="utf-8") as index:
        index.write(json.dumps(line) + "\n")


def list_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The index of ``run_dir``'s evaluations, oldest first (empty when there is none)."""
    path = run_dir / "evaluations" / INDEX
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def point_latest(run_dir: Path, targets: dict[str, Path | None]) -> None:
    """``run_dir/<name>`` -> ``target`` for every item, as relative symlinks replaced atomically (a copy where the
    file system has no symlinks); a None target removes the name (the newest evaluation has no such file)."""
    for name, target in targets.items():
        link = run_dir / name
        if target is None:
            if link.is_symlink() or link.exists():
                _remove(link)
            continue
        staged = run_dir / f".{name}.new"
        if staged.is_symlink() or staged.exists():
            _remove(staged)
        try:
            os.symlink(os.path.relpath(target, run_dir), staged)
        except OSError:
            (shutil.copytree if target.is_dir() else shutil.copyfile)(target, staged)
        if link.is_dir() and not link.is_symlink():  # the copy of an earlier evaluation (kept in its own folder)
            shutil.rmtree(link)
        os.replace(staged, link)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
