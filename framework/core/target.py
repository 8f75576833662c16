"""The "no target" decision (``model.target_decision``): whether a question's answer has a target in the image at all.

A target decision reads a question's answer-mask logits [B,h,w] and returns one logit [B] that the answer has a
target; an answer whose probability is below ``eval.target_threshold`` becomes the empty mask ("no target"). It is
trained with binary cross-entropy against "the sample's mask is not empty" (``loss.target_weight``), on the logits
the model produced, detached: the decision learns to read the masks without reshaping them. Without
``model.target_decision`` (the reference) an answer is "no target" only when its mask is empty.

- ``mask_statistics``: a small MLP over three statistics of the logits: the largest, the mean of the top
  ``top_fraction`` of pixels, and the mean sigmoid (the soft answered area). The statistics depend on the image and
  the question through the mask, so the decision does too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framework.core.errors import ConfigError
from framework.core.registry import Registry

TARGETS = Registry("target decision")
REJECTED_LOGIT = -1e4  # the mask logit of every pixel of an answer decided "no target"


@TARGETS.register("mask_statistics")
class MaskStatisticsTarget(nn.Module):
    """Target logit [B] from mask logits [B,h,w]: an MLP (``hidden`` wide) over (max, mean of the top
    ``top_fraction`` of pixels, mean sigmoid)."""

    def __init__(self, hidden: int = 16, top_fraction: float = 0.01) -> None:
        super().__init__()
        if hidden < 1:
            raise ConfigError(f"model.target_decision.hidden: expected a number >= 1, got {hidden}")
        if not 0 < top_fraction <= 1:
            raise ConfigError(f"model.target_decision.top_fraction: expected a fraction in (0, 1], got {top_fraction}")
        self.top_fraction = top_fraction
        self.net = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def statistics(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """[B,3]: largest logit, mean of the top ``top_fraction``, mean sigmoid."""
        flat = mask_logits.flatten(1).float()
        top = flat.topk(max(1, round(self.top_fraction * flat.shape[1])), dim=1).values
        return torch.stack([flat.max(1).values, top.mean(1), flat.sigmoid().mean(1)], dim=1)

    def forward(self, mask_logits: torch.Tensor) -> torch.Tensor:
        return self.net(self.statistics(mask_logits)).squeeze(1)


def target_loss(target_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE of target logits [B] against "mask [B,H,W] has a target pixel"."""
    present = masks.flatten(1).any(1).to(target_logits.dtype)
    return F.binary_cross_entropy_with_logits(target_logits, present)


def decide(
    target: nn.Module | None, mask_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mask logits [B,h,w] with every answer decided "no target" set to ``REJECTED_LOGIT``, target probability [B]
    or None without a decision); an answer is "no target" when its probability is below ``threshold``."""
    if target is None:
        return mask_logits, None
    probability = target(mask_logits).sigmoid()
    rejected = (probability < threshold)[:, None, None]
    return mask_logits.masked_fill(rejected, REJECTED_LOGIT), probability
