"""Trained weights in and out of a ``SegEarthModel``: slim checkpoints and where weights come from.

A ``segearth fit`` checkpoint leaves the frozen slots out (the frozen SmolLM2 alone would be 0.5 GB): they are
rebuilt from the config, as fit built them (same seed, same weights files), and a fingerprint of each, stored in the
checkpoint, checks that the rebuilt slot is the one trained with. The checkpoint's ``state_dict`` holds the task's
tensors, the model's under ``model.``.

``WeightsSource`` is what evaluation and prediction load from: a checkpoint here, a model bundle in
``framework.infer.bundle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from framework.core.config import with_defaults
from framework.core.errors import UserError
from framework.core.model import SegEarthModel

MODEL_PREFIX = "model."  # the task's attribute that holds the model, so the prefix of its keys in a checkpoint
FROZEN_KEY = "frozen_slots"  # checkpoint entry: slot -> fingerprint of the frozen slot trained with


class WeightsSource(Protocol):
    """Trained weights: ``model_config`` (the ``model`` section they fit, or None to use the experiment's),
    ``run_dir`` (the run folder they belong to, or None), ``source`` (how to name them) and ``load_into(model)``."""

    model_config: dict | None
    run_dir: Path | None
    source: str

    def load_into(self, model: SegEarthModel) -> None: ...


def fingerprint(module: nn.Module) -> list[float]:
    """Cheap identity of a module's weights: per-tensor sums, to check that a rebuilt frozen slot is the same."""
    return [float(t.detach().double().sum()) for t in module.state_dict().values() if t.is_floating_point()]


def build_model(cfg: dict[str, Any]) -> SegEarthModel:
    """The model of ``cfg`` built as ``fit`` builds it: after seeding torch with ``cfg['seed']``, so that frozen
    random-initialised slots come out as they were trained."""
    torch.manual_seed(cfg["seed"])
    return SegEarthModel(cfg["model"])


def slim_state(model: SegEarthModel, state: dict[str, torch.Tensor], prefix: str = MODEL_PREFIX) -> dict[str, list]:
    """Remove the frozen slots' tensors from ``state`` (keys under ``prefix``) in place; returns their fingerprints."""
    frozen = {}
    for slot in model.frozen_slots:
        slot_prefix = f"{prefix}{slot}."
        for key in [k for k in state if k.startswith(slot_prefix)]:
            del state[key]
        frozen[slot] = fingerprint(getattr(model, slot))
    return frozen


def restore_frozen(
    model: SegEarthModel, state: dict[str, torch.Tensor], frozen: dict[str, list], prefix: str = MODEL_PREFIX
) -> None:
    """Put ``model``'s rebuilt frozen slots into ``state`` (keys under ``prefix``) in place, after checking each
    against the fingerprint it was trained with."""
    for slot, expected in frozen.items():
        module = getattr(model, slot)
        if not torch.allclose(torch.tensor(fingerprint(module)), torch.tensor(expected), rtol=1e-5, atol=1e-3):
            raise UserError(
                f"frozen slot '{slot}' rebuilt from the config differs from the one trained with "
                "(different weights file or seed?)"
            )
        for key, value in module.state_dict().items():
            state[f"{prefix}{slot}.{key}"] = value


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """``state`` has exactly ``model``'s tensors with their shapes, else a UserError naming the first difference
    (a checkpoint tested with another config than the one it was trained with)."""
    own = model.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    mismatched = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if not (missing or unexpected or mismatched):
        return
    if mismatched:
        key = mismatched[0]
        first = f"first {key}: {tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} in the model"
    else:
        first = f"first {missing[0]} missing from the checkpoint" if missing else f"first {unexpected[0]} not in the model"
    raise UserError(
        f"{source}: the checkpoint does not fit the model of this config ({len(mismatched)} tensors of another "
        f"shape, {len(missing)} missing, {len(unexpected)} unexpected; {first}): was it trained with another "
        "config? Use the config.yaml of its run folder"
    )


def read_checkpoint(path: Path) -> dict:
    """A ``segearth fit`` checkpoint as a dict; a truncated or foreign file is a UserError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file is the user's to fix  # noqa: BLE001
        raise UserError(f"{path}: cannot read checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def checkpoint_config(checkpoint: dict, path: Path) -> dict:
    """The resolved experiment config ``checkpoint`` (read from ``path``) was trained with, with the defaults of keys
    added since."""
    config = checkpoint.get("hyper_parameters", {}).get("config")
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a segearth checkpoint (no experiment config inside)")
    return with_defaults(config, source=str(path))


@dataclass
class CheckpointWeights:
    """The weights of a ``segearth fit`` checkpoint file (its ``state_dict``: the weight average when it was kept)."""

    path: Path
    model_config: dict | None = None  # the experiment's model section is used: a checkpoint is read with its config

    def __post_init__(self) -> None:
        self.checkpoint = read_checkpoint(self.path)
        self.source = str(self.path)
        self.run_dir = self.path.parent.parent if self.path.parent.name == "checkpoints" else None

    @property
    def config(self) -> dict:
        """The experiment config the checkpoint was trained with."""
        return checkpoint_config(self.checkpoint, self.path)

    def model_state(self, model: SegEarthModel) -> dict[str, torch.Tensor]:
        """The checkpoint's model tensors (keys as in ``model.state_dict()``), frozen slots rebuilt from ``model``
        and checked; a checkpoint that does not fit ``model`` is a UserError."""
        state = {k: v for k, v in self.checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
        restore_frozen(model, state, self.checkpoint.get(FROZEN_KEY, {}))
        state = {k[len(MODEL_PREFIX) :]: v for k, v in state.items()}
        check_fits(model, state, self.path)
        return state

    def load_into(self, model: SegEarthModel) -> None:
        """Copy the checkpoint's model tensors into ``model`` (strict), frozen slots rebuilt and checked."""
        model.load_state_dict(self.model_state(model), strict=True)


def load_checkpoint_model(path: Path) -> tuple[SegEarthModel, dict]:
    """(the trained ``SegEarthModel``, its experiment config) of a ``segearth fit`` checkpoint."""
    weights = CheckpointWeights(path)
    cfg = weights.config
    model = build_model(cfg)
    weights.load_into(model)
    return model, cfg
