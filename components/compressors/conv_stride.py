"""Compressor ``conv_stride``: the reference's compression connector, resolution-agnostic."""

from __future__ import annotations

import torch
from torch import nn

from components.compressors._ratio import halvings
from framework.core.contracts import Compressor
from framework.core.registry import COMPRESSORS


@COMPRESSORS.register("conv_stride")
class ConvStrideCompressor(Compressor):
    """n x (3x3 stride-2 conv + norm), then a 1x1 conv, with no activation anywhere; n = log4(ratio).

    ratio 16 (n = 2) is the reference: res5 [B,1024,32,32] -> [B,64,out_dim]. The reference normalises with
    ``LayerNorm([C,H,W])``, which bakes the feature-map size into the module; ``GroupNorm(1, C)`` normalises over
    (C,H,W) jointly per sample in the same way but has a per-channel affine, so any h, w work.
    ``forward(feature [B,C,h,w]) -> tokens [B,N,out_dim]``, N = h' * w' with h' = h halved n times, rounded up.
    """

    def __init__(self, in_channels: int, out_dim: int, ratio: int = 16) -> None:
        super().__init__()
        self.steps = halvings(ratio, "compressor.ratio")
        layers: list[nn.Module] = []
        for step in range(self.steps):
            layers += [
                nn.Conv2d(in_channels if step == 0 else out_dim, out_dim, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(1, out_dim),
            ]
        layers.append(nn.Conv2d(out_dim, out_dim, kernel_size=1))
        self.body = nn.Sequential(*layers)

    def num_tokens(self, h: int, w: int) -> int:
        for _ in range(self.steps):
            h, w = -(-h // 2), -(-w // 2)
        return h * w

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.body(feature).flatten(2).transpose(1, 2)

    @classmethod
    def example_config(cls) -> dict:
        return {"ratio": 16}
