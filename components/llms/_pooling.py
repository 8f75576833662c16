"""How the description embedding [B,D] is pooled from the LLM's final hidden states."""

from __future__ import annotations

import math

import torch
from torch import nn

POOLINGS = ("mean", "seg_token", "last_token", "attention_pool")


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` [B,L,D] over the positions where ``mask`` [B,L] is True -> [B,D]."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


class AttentionPool(nn.Module):
    """A learned single query attending over the description span: ``softmax(<q, h_i> / sqrt(D)) · h``.

    The query starts at zero, so at initialisation this is exactly the mean pooling of the reference.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B,L,D], ``mask`` [B,L] bool -> [B,D] (computed in float32, returned in the tokens' dtype)."""
        values = tokens.float()
        scores = (values @ self.query.float()) / math.sqrt(values.shape[-1])
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return (weights.unsqueeze(-1) * values).sum(dim=1).to(tokens.dtype)
