"""Projector ``mlp``: the description embedding alone, no visual fusion (an ablation of the D-Projector)."""

from __future__ import annotations

import torch
from torch import nn

from framework.core.contracts import LLMOutput, Projector
from framework.core.registry import PROJECTORS


@PROJECTORS.register("mlp")
class MLPProjector(Projector):
    """queries = Linear(hidden -> out_dim)(GELU(Linear(text_dim -> hidden)(pooled))).

    ``forward(llm: LLMOutput, features) -> queries [B,1,out_dim]``; the features are not read.
    """

    def __init__(
        self,
        text_dim: int,
        feature_channels: list[int],
        feature_strides: list[int],
        out_dim: int,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        del feature_channels, feature_strides  # no visual fusion is the point of this ablation
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, llm: LLMOutput, features: list[torch.Tensor]) -> torch.Tensor:
        return self.mlp(llm.pooled).unsqueeze(1)

    @classmethod
    def example_config(cls) -> dict:
        return {"hidden": 32}
