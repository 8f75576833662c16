"""The "no target" decision (``model.target_decision``): whether a question's answer has a target in the image at
all.

A target decision reads a question's answer-mask logits [B,h,w] and returns one logit [B] that the answer has a
target; an answer whose probability is below ``eval.target_threshold`` becomes the empty mask ("no target").
Without ``model.target_decision`` (the reference) an answer is "no target" only when its mask is empty.

- ``mask_statistics``: logistic regression on three statistics of the logits: the largest, the mean of the top
  ``top_fraction`` of pixels, and the mean sigmoid (the soft answered area). They depend on the image and the
  question through the mask, so the decision does too. It is fitted, not trained by the optimiser: training
  records the statistics of the ``memory`` most recent training answers and whether their samples have a target
  (``observe``), and the task fits the regression to them (Newton's method, a small ridge) before every
  validation, so the checkpoints carry the fit. A fit is immune to the learning rate, weight decay and weight
  average that suit the rest of the model, and four coefficients fitted to thousands of answers cannot
  overfit. Before its first fit it is the reference's rule: a target when the largest logit is above 0.
"""

from __future__ import annotations

import torch
from torch import nn

from framework.core.errors import ConfigError
from framework.core.registry import Registry

TARGETS = Registry("target decision")
REJECTED_LOGIT = -1e4  # the mask logit of every pixel of an answer decided "no target"


@TARGETS.register("mask_statistics")
class MaskStatisticsTarget(nn.Module):
    """Target logit [B] from mask logits [B,h,w]: ``coef`` · (max, mean of the top ``top_fraction`` of pixels,
    mean sigmoid, 1), fitted to the last ``memory`` training answers (``observe``, ``fit``)."""

    def __init__(self, memory: int = 4096, top_fraction: float = 0.01, ridge: float = 1e-3) -> None:
        super().__init__()
        if memory < 2:
            raise ConfigError(f"model.target_decision.memory: expected a number >= 2, got {memory}")
        if not 0 < top_fraction <= 1:
            raise ConfigError(f"model.target_decision.top_fraction: expected a fraction in (0, 1], got {top_fraction}")
        if ridge < 0:
            raise ConfigError(f"model.target_decision.ridge: expected a number >= 0, got {ridge}")
        self.top_fraction, self.ridge = top_fraction, ridge
        self.register_buffer("coef", torch.tensor([1.0, 0.0, 0.0, 0.0]))  # the reference's rule: max logit > 0
        self.register_buffer("seen_statistics", torch.zeros(memory, 3))
        self.register_buffer("seen_present", torch.zeros(memory))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))  # answers observed so far (ring position)

    def statistics(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """[B,3]: largest logit, mean of the top ``top_fraction``, mean sigmoid."""
        flat = mask_logits.flatten(1).float()
        top = flat.topk(max(1, round(self.top_fraction * flat.shape[1])), dim=1).values
        return torch.stack([flat.max(1).values, top.mean(1), flat.sigmoid().mean(1)], dim=1)

    def forward(self, mask_logits: torch.Tensor) -> torch.Tensor:
        return self.statistics(mask_logits) @ self.coef[:3] + self.coef[3]

    @torch.no_grad()
    def observe(self, mask_logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Remember the statistics of training answers [B,h,w] and whether their masks [B,H,W] have a target."""
        stats, present = self.statistics(mask_logits.detach()), masks.flatten(1).any(1).float()
        rows = (self.seen + torch.arange(len(stats), device=stats.device)) % len(self.seen_present)
        self.seen_statistics[rows] = stats.to(self.seen_statistics.dtype)
        self.seen_present[rows] = present.to(self.seen_present.dtype)
        self.seen += len(stats)

    def memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(statistics [N,3], target present [N]) of the answers remembered."""
        n = min(int(self.seen), len(self.seen_present))
        return self.seen_statistics[:n], self.seen_present[:n]

    @torch.no_grad()
    def fit(self, statistics: torch.Tensor, present: torch.Tensor, iterations: int = 25) -> bool:
        """Fit ``coef`` to answers' statistics [N,3] and targets [N] (standardised features, Newton's method, ridge
        ``ridge`` on the slopes); False, and ``coef`` kept, while the answers hold only one class."""
        if len(present) < 2 or present.min() == present.max():
            return False
        x, y = statistics.double(), present.double()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        design = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        ridge = torch.diag(torch.tensor([self.ridge * len(x)] * 3 + [0.0], dtype=x.dtype))
        w = torch.zeros(4, dtype=x.dtype)
        for _ in range(iterations):
            p = torch.sigmoid(design @ w)
            gradient = design.T @ (p - y) + ridge @ w
            hessian = design.T @ (design * (p * (1 - p))[:, None]) + ridge + 1e-9 * torch.eye(4, dtype=x.dtype)
            w = w - torch.linalg.solve(hessian, gradient)
        slopes = w[:3] / std  # back to the raw statistics
        self.coef.copy_(torch.cat([slopes, (w[3] - (mean * slopes).sum()).reshape(1)]).to(self.coef.dtype))
        return True


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
