"""Compressor ``none``: no compression, one visual token per feature-map position (an ablation)."""

from __future__ import annotations

import torch
from torch import nn

from framework.core.contracts import Compressor
from framework.core.registry import COMPRESSORS


@COMPRESSORS.register("none")
class NoCompression(Compressor):
    """Linear(in_channels -> out_dim) at every position. ``forward(feature [B,C,h,w]) -> tokens [B,h*w,out_dim]``."""

    def __init__(self, in_channels: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, out_dim)

    def num_tokens(self, h: int, w: int) -> int:
        return h * w

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.proj(feature.flatten(2).transpose(1, 2))

    @classmethod
    def example_config(cls) -> dict:
        return {}
