"""Perceiver-style attention blocks shared by the description projectors and the ``perceiver`` compressor.

Latents (queries) attend to media tokens *and to themselves*: K/V come from ``concat(media, latents)``, as in
Flamingo's Perceiver resampler and in the reference's D-Projector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverAttention(nn.Module):
    """LN(media), LN(latents); Q from the latents, K/V from concat(media, latents); no biases.

    ``forward(media [B,N,dim], latents [B,Q,dim]) -> [B,Q,dim]`` (the update; the caller adds the residual).
    """

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media = self.norm_media(media)
        latents = self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [B,heads,n,dim_head]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        return self.to_out(out.transpose(1, 2).flatten(2))


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LN -> Linear(dim -> dim*mult, no bias) -> GELU -> Linear(dim*mult -> dim, no bias); [..., dim] -> [..., dim]."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverFusion(nn.Module):
    """``depth`` x (latents += attention(media, latents); latents += FF(latents)), then a final LayerNorm.

    ``forward(media [B,N,dim], latents [B,Q,dim]) -> [B,Q,dim]``. With depth 1 and ff_mult 1 this is the
    reference's ``D_Projector``.
    """

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, heads, dim_head), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        for attention, ff in self.layers:
            latents = attention(media, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
