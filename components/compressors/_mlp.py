"""The token MLP of the pooling compressors."""

from __future__ import annotations

from torch import nn


def token_mlp(in_dim: int, out_dim: int) -> nn.Sequential:
    """LN -> Linear(in_dim -> out_dim) -> GELU -> Linear(out_dim -> out_dim); [..., in_dim] -> [..., out_dim]."""
    return nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
