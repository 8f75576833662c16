"""Training at scale: one run folder for all processes, strategies by name, the non-finite loss guard.

Launch: ``segearth fit`` on one process (Lightning starts the other ranks itself for ``trainer.devices`` > 1), or
every rank started by ``torchrun`` / SLURM ``srun``. However started, all processes of one launch write into the
same run folder: global rank 0 picks it, and the others learn it from the environment Lightning passes to the
ranks it starts (``SEGEARTH_RUN_DIR``), or, under torchrun / srun, from a small file rank 0 writes under
``<output_dir>/<name>/.launches/<launch id>`` (the launch id is torchrun's run id or SLURM's job and step id;
multi-node runs need ``output_dir`` on a shared file system, as resuming does anyway).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from framework.core.errors import ConfigError, UserError
from framework.train.checkpointing import AtomicCheckpointIO, last_checkpoint

RUN_DIR_ENV = "SEGEARTH_RUN_DIR"
RENDEZVOUS_TIMEOUT_S = 600.0


# ---------------------------------------------------------------- one run folder per launch
def _launch() -> tuple[int, int, str | None]:
    """(global rank, world size, launch id) of this process from the launcher's environment; (0, 1, None) when
    this process was started on its own (Lightning starts its other ranks later, from this one)."""
    if torch.distributed.is_available() and torch.distributed.is_torchelastic_launched():
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        step = os.environ.get("SLURM_STEP_ID", "0")
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), f"slurm-{os.environ['SLURM_JOB_ID']}-{step}"
    return 0, 1, None


def shared_run_dir(
    cfg: dict[str, Any], new_run_dir: Callable[[dict[str, Any]], Path], resumed: Path | None = None
) -> Path:
    """The run folder every process of this launch uses: the resumed checkpoint's run folder, ``$SEGEARTH_RUN_DIR``,
    or a new one (``new_run_dir(cfg)``) made by global rank 0 and announced to the other ranks (module docstring)."""
    if resumed is not None and resumed.parent.name == "checkpoints":
        return resumed.parent.parent
    if os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    rank, world, launch = _launch()
    if world == 1:
        return new_run_dir(cfg)
    marker = Path(cfg["output_dir"]) / cfg["name"] / ".launches" / launch
    if rank == 0:
        run_dir = new_run_dir(cfg)
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
        tmp.write_text(str(run_dir))
        os.replace(tmp, marker)
        return run_dir
    # rank 0 may have written the marker a little before this rank got here; one written long before is from an
    # earlier launch with the same id (a requeued SLURM job) and is not ours
    not_before = time.time() - 300
    deadline = time.time() + RENDEZVOUS_TIMEOUT_S
    while time.time() < deadline:
        if marker.is_file() and marker.stat().st_mtime >= not_before:
            return Path(marker.read_text())
        time.sleep(0.2)
    raise UserError(f"rank {rank}: rank 0 did not announce a run folder in {marker} within {RENDEZVOUS_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def run_dir_for_children(run_dir: Path) -> Iterator[None]:
    """While Lightning starts further ranks from this process, they inherit the run folder through the environment."""
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous


# ---------------------------------------------------------------- trainer arguments
def trainer_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``trainer:`` section as Lightning ``Trainer`` arguments; an argument Lightning does not know is a
    ConfigError with the closest name."""
    import difflib
    import inspect

    import lightning as L

    valid = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "logger", "callbacks", "default_root_dir"}
    unknown = sorted(set(cfg["trainer"]) - valid)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, 1)
            hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
        raise ConfigError(f"trainer: unknown Lightning Trainer argument(s): {', '.join(hints)}")
    kwargs = dict(cfg["trainer"])
    _probe_trainer(kwargs)
    return kwargs


def _probe_trainer(kwargs: dict[str, Any]) -> None:
    """Build a Trainer from ``kwargs`` and drop it, so that a value Lightning refuses (devices, precision, strategy
    or accelerator names) is a ConfigError before any run folder, MLflow run or model exists."""
    import logging

    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # the device lines print once, at the real one
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        L.Trainer(**{**kwargs, "logger": False, "enable_checkpointing": False, "callbacks": []})
    except (MisconfigurationException, ValueError) as exc:
        raise ConfigError(f"trainer: {str(exc).strip().splitlines()[0]}") from None
    finally:
        quiet.setLevel(level)


def seed_everything(cfg: dict[str, Any]) -> None:
    """Seed python, numpy, torch and the data loader workers from ``cfg['seed']``."""
    import lightning as L

    L.seed_everything(cfg["seed"], workers=True, verbose=False)


# ---------------------------------------------------------------- strategies
def _fsdp_wrap_classes(model: torch.nn.Module) -> set[type[torch.nn.Module]]:
    """FSDP units: each slot's module (so a frozen bf16 encoder is never flattened together with fp32 weights)
    and the repeated blocks inside: the LLM's decoder layers (HF ``_no_split_modules``) and timm's Swin blocks."""
    from timm.models.swin_transformer import SwinTransformerBlock

    classes: set[type[torch.nn.Module]] = {type(m) for m in model.slots().values()}
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    for module in model.modules():
        if type(module).__name__ in names or isinstance(module, SwinTransformerBlock):
            classes.add(type(module))
    return classes


def build_strategy(name: Any, model: torch.nn.Module) -> Any:
    """The Lightning strategy for ``trainer.strategy``.

    ``ddp``: DDP that tolerates parameters without a gradient in a step (which ones get one depends on the config:
    the LM head only with an LM loss, the pooling variant, LoRA). ``fsdp``: full sharding wrapped per slot and per
    transformer block, original parameters kept (mixed frozen/trainable), checkpoints gathered into one file.
    Other names (``auto``, ``deepspeed_stage_2``, ``deepspeed_stage_3``, ``ddp_spawn``, ...) and strategy objects
    go to Lightning unchanged."""
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy(auto_wrap_policy=_fsdp_wrap_classes(model), use_orig_params=True, state_dict_type="full")
    if isinstance(name, str) and name.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(f"trainer.strategy: {name} needs the deepspeed package (pip install deepspeed)")
    return name


def fit_trainer_kwargs(trainer_kwargs: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``trainer:`` arguments for ``fit``: the strategy built by ``build_strategy`` and, where Lightning writes
    checkpoints through a ``CheckpointIO`` (all but DeepSpeed, which writes its own folders), atomic writes."""
    kwargs = dict(trainer_kwargs)
    strategy = kwargs.get("strategy", "auto")
    kwargs["strategy"] = build_strategy(strategy, model)
    if not (isinstance(strategy, str) and strategy.startswith("deepspeed")) and "plugins" not in kwargs:
        kwargs["plugins"] = [AtomicCheckpointIO()]
    return kwargs


# ---------------------------------------------------------------- non-finite losses
class NonFiniteLoss(UserError):
    """A training loss was NaN or infinite (``optim.on_nonfinite: stop``)."""


def guard_loss(task, loss: torch.Tensor, batch: dict) -> torch.Tensor:
    """``loss`` when it is finite on every process. Otherwise, by ``optim.on_nonfinite``: ``stop`` raises
    ``NonFiniteLoss`` naming the step, the samples of the batch (all processes) and the last good checkpoint;
    ``skip`` returns an exact zero tied to every trainable parameter (so DDP's gradient exchange still runs on all
    processes) and marks the step for ``drop_gradients``, which then leaves the optimiser step out."""
    bad = not bool(torch.isfinite(loss.detach()).all())
    trainer = task.trainer
    if trainer.world_size > 1:
        bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
    if not bad:
        return loss
    ids = sorted(int(i) for part in task._gather(batch["id"].tolist()) for i in part)
    where = f"step {trainer.global_step} (epoch {trainer.current_epoch}), samples {ids}"
    if task.config["optim"]["on_nonfinite"] == "stop":
        last = last_checkpoint(trainer)
        raise NonFiniteLoss(
            f"non-finite training loss ({float(loss.detach())}) at {where}; last good checkpoint: "
            f"{last or 'none yet'} (resume with --resume, or set optim.on_nonfinite=skip)"
        )
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(f"non-finite training loss at {where}: optimiser step skipped")
    task.skipped_steps += 1
    task.skip_update = True
    params = [p for p in task.parameters() if p.requires_grad]
    return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=loss.device))


def drop_gradients(task, optimizer: torch.optim.Optimizer) -> None:
    """After the backward of a skipped step: no gradients, so the optimiser leaves every parameter and its state
    alone (``torch.optim`` skips parameters whose ``grad`` is None). DeepSpeed keeps gradients in its own buffers:
    there the skipped step still runs, on the zero gradients of ``guard_loss``."""
    if not task.skip_update:
        return
    task.skip_update = False
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None

