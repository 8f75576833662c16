"""Perceiver-style attention blocks shared by the description projectors and the ``perceiver`` compressor.

Latents (queries) attend to media tokens *and to themselves*: K/V come from ``concat(media, latents)``, as in
Flamingo's Perceiver resampler and in the reference's D-Projector.
"""

from __future__ import annotations

import math

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


def sine_position_encoding_2d(h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """DETR-style 2-D sine encoding of an h x w grid, row-major: [h*w, dim] (dim divisible by 4).

    Coordinates are normalised to (0, 2*pi) so that a position keeps its code at any resolution.
    The first half of the channels encodes y (sin, cos), the second half x.
    """
    quarter = dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    y = (ys[:, None] * freqs)[:, None, :].expand(h, w, quarter)
    x = (xs[:, None] * freqs)[None, :, :].expand(h, w, quarter)
    encoding = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1)
    return encoding.reshape(h * w, 4 * quarter).to(dtype)
