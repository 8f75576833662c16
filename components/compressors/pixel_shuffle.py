"""Compressor ``pixel_shuffle``: space-to-depth by k, then a token MLP (InternVL-style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.compressors._mlp import token_mlp
from components.compressors._ratio import square_side
from framework.core.contracts import Compressor
from framework.core.registry import COMPRESSORS


@COMPRESSORS.register("pixel_shuffle")
class PixelShuffleCompressor(Compressor):
    """Stack each k x k block's features into one token of C*k*k channels (ratio = k*k; the map is zero-padded at
    the bottom/right to a multiple of k), then LN -> Linear -> GELU -> Linear to out_dim.

    ``forward(feature [B,C,h,w]) -> tokens [B,ceil(h/k)*ceil(w/k),out_dim]``.
    """

    def __init__(self, in_channels: int, out_dim: int, ratio: int = 16) -> None:
        super().__init__()
        self.factor = square_side(ratio, "compressor.ratio")
        self.mlp = token_mlp(in_channels * ratio, out_dim)

    def num_tokens(self, h: int, w: int) -> int:
        return -(-h // self.factor) * -(-w // self.factor)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        k = self.factor
        h, w = feature.shape[-2:]
        feature = F.pad(feature, (0, -w % k, 0, -h % k))
        stacked = F.pixel_unshuffle(feature, k)  # [B,C*k*k,h/k,w/k]
        return self.mlp(stacked.flatten(2).transpose(1, 2))

    @classmethod
    def example_config(cls) -> dict:
        return {"ratio": 4}
