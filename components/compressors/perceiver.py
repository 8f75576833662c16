"""Compressor ``perceiver``: a fixed number of learned queries cross-attend to the feature map."""

from __future__ import annotations

import torch
from torch import nn

from components._attention import PerceiverFusion
from framework.core.contracts import Compressor
from framework.core.errors import ConfigError
from framework.core.positions import sine_position_encoding_2d
from framework.core.registry import COMPRESSORS


@COMPRESSORS.register("perceiver")
class PerceiverCompressor(Compressor):
    """Perceiver resampler: ``num_tokens`` learned latents attend to the flattened map (Linear(C -> dim) plus a 2-D
    sine position code computed for the actual h, w) and to themselves, ``depth`` layers, then Linear(dim -> out_dim).

    ``forward(feature [B,C,h,w]) -> tokens [B,num_tokens,out_dim]`` at any h, w.
    """

    def __init__(
        self,
        in_channels: int,
        out_dim: int,
        num_tokens: int = 64,
        dim: int = 512,
        depth: int = 2,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        if num_tokens < 1 or depth < 1:
            raise ConfigError(f"compressor: num_tokens ({num_tokens}) and depth ({depth}) must be >= 1")
        if dim % 4:
            raise ConfigError(f"compressor.dim: {dim} must be divisible by 4 (2-D sine position encoding)")
        self.token_count = num_tokens
        self.latents = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)
        self.input_proj = nn.Linear(in_channels, dim)
        self.fusion = PerceiverFusion(dim, depth=depth, heads=heads, dim_head=dim_head, ff_mult=ff_mult)
        self.out = nn.Linear(dim, out_dim)

    def num_tokens(self, h: int, w: int) -> int:
        return self.token_count

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feature.shape
        media = self.input_proj(feature.flatten(2).transpose(1, 2))  # [B,h*w,dim]
        media = media + sine_position_encoding_2d(h, w, media.shape[-1], media.device, media.dtype)
        latents = self.latents.unsqueeze(0).expand(b, -1, -1)
        return self.out(self.fusion(media, latents))

    @classmethod
    def example_config(cls) -> dict:
        return {"num_tokens": 8, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "ff_mult": 2}
