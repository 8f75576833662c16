"""The description projector (the reference code's "D-Projector" path), parametrized by which encoder levels it sees.

``cross_attention`` (one level, the reference code) and ``multiscale_cross_attention`` (several levels, the paper's
description) are thin registered wrappers around :class:`DescriptionCrossAttention`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from components._attention import PerceiverFusion
from framework.core.contracts import LLMOutput, Projector
from framework.core.errors import ConfigError


def resolve_levels(levels: Sequence[int], num_levels: int, where: str) -> list[int]:
    """Config level indices (negative = from the coarsest end) -> distinct indices in [0, num_levels)."""
    resolved = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int) or not -num_levels <= level < num_levels:
            raise ConfigError(
                f"{where}: level {level!r} is not an encoder level index; the encoder has {num_levels} levels "
                f"(use 0..{num_levels - 1} or -{num_levels}..-1)"
            )
        resolved.append(level % num_levels)
    if not resolved or len(set(resolved)) != len(resolved):
        raise ConfigError(f"{where}: levels {list(levels)} must be a non-empty list of distinct levels")
    return resolved


class DescriptionCrossAttention(Projector):
    """queries = Linear(2*dim -> out_dim)(cat(origin, fused)), Q = 1.

    - origin = Linear(text_dim -> dim)(pooled)
    - media = concat over levels of Linear(C_level -> dim)(level tokens) [+ a learned per-level embedding]
    - fused = PerceiverFusion(depth 1)(media, latent = Linear(text_dim -> dim)(pooled))

    The reference also projects the L per-token description states into latents 1..L, but attention is per query
    and the feed-forward per token, so those latents never reach latent 0, the only one it returns; they are not
    computed here. ``forward(llm, features) -> [B,1,out_dim]``.
    """

    def __init__(
        self,
        text_dim: int,
        feature_channels: list[int],
        out_dim: int,
        levels: list[int],
        level_embedding: bool,
        dim: int,
        heads: int,
        dim_head: int,
        ff_mult: int,
    ) -> None:
        super().__init__()
        self.levels = levels
        self.origin = nn.Linear(text_dim, dim)
        self.latent = nn.Linear(text_dim, dim)
        self.media = nn.ModuleList(nn.Linear(feature_channels[level], dim) for level in levels)
        # With one level an embedding would only duplicate the media Linear's bias.
        self.level_embed = nn.Parameter(torch.randn(len(levels), dim) * 0.02) if level_embedding else None
        self.fusion = PerceiverFusion(dim, depth=1, heads=heads, dim_head=dim_head, ff_mult=ff_mult)
        self.out = nn.Linear(2 * dim, out_dim)

    def forward(self, llm: LLMOutput, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = llm.pooled.unsqueeze(1)  # [B,1,text_dim]
        media = []
        for i, (level, project) in enumerate(zip(self.levels, self.media, strict=True)):
            tokens = project(features[level].flatten(2).transpose(1, 2))  # [B,h*w,dim]
            if self.level_embed is not None:
                tokens = tokens + self.level_embed[i]
            media.append(tokens)
        fused = self.fusion(torch.cat(media, dim=1), self.latent(pooled))
        return self.out(torch.cat([self.origin(pooled), fused], dim=-1))
