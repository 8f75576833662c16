"""Question-independent work done once per image when a batch repeats one image.

Asking several questions of one image feeds the model ``features`` expanded over the batch
(``[f.expand(n, *f.shape[1:]) for f in model.encode(image)]``): every row is the same tensor memory (batch
stride 0). Parts that read only the image (compressor, pixel decoder) then compute row 0 and expand the result,
which is exact (the rows are identical by construction) and differentiable (expand's gradient sums the rows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn


def repeats_one_image(*tensors: torch.Tensor) -> bool:
    """True when every tensor has more than one batch row and they all share one row's memory (batch stride 0)."""
    return all(t.shape[0] > 1 and t.stride(0) == 0 for t in tensors)


def expand_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """[1,...] -> [rows,...] as a stride-0 view (no copy)."""
    return tensor.expand(rows, *tensor.shape[1:])


def once_per_image(forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
    """Decorates ``forward(self, feature [B,...]) -> [B,...]`` of a module that reads only the image: a feature
    repeating one image over the batch is computed on row 0 and the result expanded."""

    @functools.wraps(forward)
    def wrapper(self: nn.Module, feature: torch.Tensor) -> torch.Tensor:
        if repeats_one_image(feature):
            return expand_rows(forward(self, feature[:1]), feature.shape[0])
        return forward(self, feature)

    return wrapper
