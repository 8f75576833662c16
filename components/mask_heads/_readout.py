"""The query side shared by the dot-product mask heads (``fpn``, ``linear``)."""

from __future__ import annotations

from torch import nn


def query_embedding(query_dim: int, dim: int) -> nn.Sequential:
    """MLP [.., query_dim] -> [.., dim] whose output starts near zero, so that with a negative bias the first
    predictions of a dot-product head say "empty"."""
    embed = nn.Sequential(nn.Linear(query_dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
    nn.init.normal_(embed[-1].weight, std=0.01)
    nn.init.zeros_(embed[-1].bias)
    return embed
