"""Exponential moving average of the trained weights (``optim.ema_decay``), kept by the task.

Averaged: every floating-point tensor of the model's state (parameters and batch-norm statistics) outside the
frozen slots. After optimiser step t (0 for the first) the average moves towards the weights by ``1 - d_t`` with
``d_t = min(decay, (1 + t) / (10 + t))`` (the warm-up of timm's ModelEma), so in a short run the first
validations are not dominated by the initial weights.

Checkpoints hold the average as their ``state_dict`` (what ``segearth test``, predict and export load) and the
training weights beside it, so ``--resume`` continues both exactly.
"""

from __future__ import annotations

import torch
from torch import nn

# the target decision's state is fitted to remembered answers, not trained: an average of it would mean nothing
UNAVERAGED = ("target_decision.",)


def _averaged_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating-point state outside its frozen slots and ``UNAVERAGED``, by state_dict name (sharing
    storage)."""
    skipped = tuple(f"{slot}." for slot in getattr(model, "frozen_slots", ())) + UNAVERAGED
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point() and not k.startswith(skipped)}


class WeightAverage:
    """The moving average of one model's trained weights; ``start`` it at the beginning of fit."""

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None
        self._live: dict[str, torch.Tensor] = {}
        self._training: dict[str, torch.Tensor] | None = None  # a resumed run's training weights, until start

    @property
    def started(self) -> bool:
        return self.average is not None

    def resume_from(self, training: dict[str, torch.Tensor] | None, prefix: str = "model.") -> None:
        """A checkpoint's training weights (keys with ``prefix``): ``start`` trains on them and takes the weights
        loaded from its state_dict as the average. None: the checkpoint has no average (or none is resumed)."""
        self._training = None if training is None else {k.removeprefix(prefix): v for k, v in training.items()}

    def start(self, model: nn.Module) -> None:
        self._live = _averaged_tensors(model)
        if self.average is not None and self._training is None:
            return
        self.average = {k: v.detach().clone() for k, v in self._live.items()}
        if self._training is not None:
            missing = self._live.keys() - self._training.keys()
            if missing:
                raise RuntimeError(f"checkpoint's training weights lack {len(missing)} tensors, e.g. {min(missing)}")
            with torch.no_grad():
                for k, v in self._live.items():
                    v.copy_(self._training[k])
            self._training = None

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimiser step ``step`` (0 for the first; a resumed run counts on from its checkpoint)."""
        assert self.average is not None, "start() first"
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for k, average in self.average.items():
            average.lerp_(self._live[k], weight)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the average (twice = no change)."""
        assert self.average is not None, "start() first"
        for k, average in self.average.items():
            live = self._live[k]
            held = live.clone()
            live.copy_(average)
            average.copy_(held)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        assert self.average is not None, "start() first"
        for k, average in self.average.items():
            self._live[k].copy_(average)

    def exchange(self, state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
        """Put the average into a checkpoint's ``state`` (keys with ``prefix``); returns the training weights it
        held there, for ``resume_from``."""
        assert self.average is not None, "start() first"
        training = {}
        for k, average in self.average.items():
            training[prefix + k] = state[prefix + k]
            state[prefix + k] = average.clone()
        return training
