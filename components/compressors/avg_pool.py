"""Compressor ``avg_pool``: k x k average pooling, then a token MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.compressors._mlp import token_mlp
from components.compressors._ratio import square_side
from framework.core.contracts import Compressor
from framework.core.registry import COMPRESSORS


@COMPRESSORS.register("avg_pool")
class AvgPoolCompressor(Compressor):
    """Average-pool k x k windows (ratio = k*k; a partial window at the bottom/right edge averages its real
    positions only), then LN -> Linear -> GELU -> Linear to out_dim.

    ``forward(feature [B,C,h,w]) -> tokens [B,ceil(h/k)*ceil(w/k),out_dim]``.
    """

    def __init__(self, in_channels: int, out_dim: int, ratio: int = 16) -> None:
        super().__init__()
        self.kernel = square_side(ratio, "compressor.ratio")
        self.mlp = token_mlp(in_channels, out_dim)

    def num_tokens(self, h: int, w: int) -> int:
        return -(-h // self.kernel) * -(-w // self.kernel)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(feature, self.kernel, ceil_mode=True)
        return self.mlp(pooled.flatten(2).transpose(1, 2))

    @classmethod
    def example_config(cls) -> dict:
        return {"ratio": 4}
