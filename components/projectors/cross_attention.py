"""Projector ``cross_attention``: the reference D-Projector, fusing the description with ONE encoder level."""

from __future__ import annotations

from components.projectors._description import DescriptionCrossAttention, resolve_levels
from framework.core.registry import PROJECTORS


@PROJECTORS.register("cross_attention")
class CrossAttentionProjector(DescriptionCrossAttention):
    """The reference code's description projector: the pooled description attends to the tokens of
    encoder level ``level`` (res5 by default) and to itself, 8 heads x 64, one layer, ff_mult 1.

    ``forward(llm: LLMOutput, features: list[[B,C_i,h_i,w_i]]) -> queries [B,1,out_dim]``.
    """

    def __init__(
        self,
        text_dim: int,
        feature_channels: list[int],
        feature_strides: list[int],
        out_dim: int,
        level: int = -1,
        dim: int = 512,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 1,
    ) -> None:
        del feature_strides  # tokens are taken at the level's own resolution
        super().__init__(
            text_dim=text_dim,
            feature_channels=feature_channels,
            out_dim=out_dim,
            levels=resolve_levels([level], len(feature_channels), "projector.level"),
            level_embedding=False,
            dim=dim,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
        )

    @classmethod
    def example_config(cls) -> dict:
        return {"level": -1, "dim": 32, "heads": 2, "dim_head": 16}
