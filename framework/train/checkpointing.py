"""Checkpoints a run can be resumed from exactly: atomic files, every process's RNG state, step checkpoints.

What a resumed ``fit`` restores and from where:

- model, optimiser, LR scheduler, loop progress (epoch, step, batch): Lightning's own checkpoint contents;
- frozen slots: rebuilt from the config and fingerprint-checked (``SegEarthTask.on_load_checkpoint``);
- the position in the training order: ``ResumableLoader.state_dict`` (``framework.data.sampling``), by ``ResumeState``;
- the random generators (python, numpy, torch) of every process: ``ResumeState`` below, put back when training
  starts, so dropout, DropPath, point sampling and augmentation draws continue as if never stopped.

``AtomicCheckpointIO`` writes a checkpoint to a temporary file next to its target, flushes it to disk and renames
it over the target (``os.replace``): a process killed mid-save leaves the previous complete file. (Lightning's
default goes through fsspec, whose temporary file lives in the system temp folder: where that is another file
system the final move is a copy, and a kill during it truncates the target.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from framework.core.errors import UserError
from framework.data.sampling import ResumableLoader

TMP_MARK = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<path>.tmp-<pid>`` in the target's folder, fsync, ``os.replace`` onto ``<path>``. A write
that fails (a full disk, a file-size limit, a quota) leaves the previous checkpoint as it was and is a UserError
saying so."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            # torch's zip writer turns a failed write into a RuntimeError raised while the OSError is handled
            failed = _os_error(exc)
            if failed is None:
                raise
            kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
            raise UserError(
                f"{path}: cannot write the checkpoint ({failed.strerror or failed}; disk full?); {kept}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        for stale in path.parent.glob(f"{path.name}{TMP_MARK}*"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError ``exc`` is, or was raised while handling (None when there is none)."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ResumeState(L.Callback):
    """Saves with each checkpoint the python/numpy/torch(/cuda) generator states of every process and the
    training loader's position; a resumed fit puts both back when training starts (before the first batch is
    drawn). Under DDP the random states of all ranks are gathered (checkpoints are made on every rank); a resume on
    a different number of processes keeps fresh random states and says so.

    (Lightning stores the loader's position itself too, but restores it only into a loader made after the loop
    state is loaded, while ``estimated_stepping_batches`` in ``configure_optimizers`` makes the loader before.)"""

    KEY = "segearth_resume"

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        ranks = [states]
        if trainer.world_size > 1:
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, states)
        loader = trainer.train_dataloader
        position = loader.state_dict() if isinstance(loader, ResumableLoader) else None
        checkpoint[self.KEY] = {"rng": ranks, "data": position}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._loaded = checkpoint.get(self.KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaded, self._loaded = self._loaded, None
        if loaded is None:
            return
        loader = trainer.train_dataloader
        if loaded["data"] is not None and isinstance(loader, ResumableLoader):
            loader.load_state_dict(loaded["data"])
        if len(loaded["rng"]) != trainer.world_size:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"resume: the checkpoint holds random states of {len(loaded['rng'])} process(es), this run has "
                f"{trainer.world_size}; random draws continue from fresh states (not an exact continuation)"
            )
            return
        states = loaded["rng"][trainer.global_rank]
        if not torch.cuda.is_available():
            states = {k: v for k, v in states.items() if k != "torch.cuda"}
        _set_rng_states(states)


def checkpoint_callbacks(checkpoint_dir: Path, every_n_steps: int) -> list[ModelCheckpoint]:
    """``best.ckpt`` (highest ``val/giou``) and ``last.ckpt`` (every epoch, and with ``every_n_steps`` > 0 also every
    that many optimiser steps, so a killed run loses at most that many steps).

    ``last.ckpt`` is a top-1 checkpoint without a monitored metric (Lightning's ``save_last`` writes only when a
    top-k checkpoint was written, i.e. when ``best`` improved); Lightning keeps step and epoch triggers apart, hence
    two such callbacks writing the same file. No version counter: a resumed run overwrites its own files."""
    best = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="best", monitor="val/giou", mode="max", enable_version_counter=False
    )
    triggers = [{"every_n_epochs": 1}] + ([{"every_n_train_steps": every_n_steps}] if every_n_steps else [])
    last = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_top_k=1, enable_version_counter=False, **trigger)
        for trigger in triggers
    ]
    return [best, *last]


def last_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the newest ``last.ckpt`` this fit wrote, or of the checkpoint it resumed from, else None."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.filename == "last" and callback.best_model_path:
            return callback.best_model_path
    return str(trainer.ckpt_path) if trainer.ckpt_path else None
