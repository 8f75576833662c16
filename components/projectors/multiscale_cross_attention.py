"""Projector ``multiscale_cross_attention``: the paper's description, fusing the description with several levels."""

from __future__ import annotations

from components.projectors._description import DescriptionCrossAttention, resolve_levels
from framework.core.registry import PROJECTORS


@PROJECTORS.register("multiscale_cross_attention")
class MultiscaleCrossAttentionProjector(DescriptionCrossAttention):
    """As ``cross_attention``, but the media are the tokens of all ``levels`` (each level projected by its own
    Linear and tagged with a learned level embedding), concatenated: "language and multi-scale features" as the
    paper describes the module (the reference code uses res5 only).

    ``forward(llm: LLMOutput, features: list[[B,C_i,h_i,w_i]]) -> queries [B,1,out_dim]``.
    """

    def __init__(
        self,
        text_dim: int,
        feature_channels: list[int],
        feature_strides: list[int],
        out_dim: int,
        levels: tuple[int, ...] = (-3, -2, -1),
        dim: int = 512,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 1,
    ) -> None:
        del feature_strides  # tokens are taken at each level's own resolution
        super().__init__(
            text_dim=text_dim,
            feature_channels=feature_channels,
            out_dim=out_dim,
            levels=resolve_levels(levels, len(feature_channels), "projector.levels"),
            level_embedding=True,
            dim=dim,
            heads=heads,
            dim_head=dim_head,
            ff_mult=ff_mult,
        )

    @classmethod
    def example_config(cls) -> dict:
        return {"levels": [-3, -2, -1], "dim": 32, "heads": 2, "dim_head": 16}
