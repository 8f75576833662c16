"""Projector ``prototype_mix``: the query is a convex mixture of learned prototype queries, chosen by the text.

The hypothesis it tests: a projector that maps the description embedding straight to a query (``mlp``,
``cross_attention``) may send a phrasing it never saw anywhere in query space, and the mask head answers an
off-distribution query with an off-distribution mask. Here every query lies in the convex hull of ``prototypes``
learned vectors, so choosing the query becomes a classification of the description. Measured on the Dubai tiles
(docs/results/dubai.md) it did not help: the unseen phrasings that fail are the ones the frozen LLM's embedding
already places nearer another class.
"""

from __future__ import annotations

import torch
from torch import nn

from framework.core.contracts import LLMOutput, Projector
from framework.core.errors import ConfigError
from framework.core.registry import PROJECTORS


@PROJECTORS.register("prototype_mix")
class PrototypeMixProjector(Projector):
    """queries = softmax(MLP(LayerNorm(pooled)) / temperature) @ prototypes.

    ``prototypes`` [K, out_dim] are learned (initialised N(0, 1), the scale of a LayerNorm'd vector); the MLP is
    ``Linear(text_dim -> hidden) -> GELU -> Linear(hidden -> K)``. ``weights`` returns the mixture [B, K].
    ``forward(llm: LLMOutput, features) -> queries [B,1,out_dim]``; the features are not read.
    """

    def __init__(
        self,
        text_dim: int,
        feature_channels: list[int],
        feature_strides: list[int],
        out_dim: int,
        prototypes: int = 32,
        hidden: int = 256,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        del feature_channels, feature_strides  # the choice of query depends on the description only
        if prototypes < 1:
            raise ConfigError(f"projector.prototypes: must be >= 1, got {prototypes}")
        if not temperature > 0:
            raise ConfigError(f"projector.temperature: must be > 0, got {temperature}")
        self.temperature = temperature
        self.select = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, prototypes)
        )
        self.prototypes = nn.Parameter(torch.randn(prototypes, out_dim))

    def weights(self, llm: LLMOutput) -> torch.Tensor:
        """The mixture weights [B, K] (rows sum to 1) for the description embeddings ``llm.pooled`` [B, text_dim]."""
        return (self.select(llm.pooled.float()) / self.temperature).softmax(dim=-1)

    def forward(self, llm: LLMOutput, features: list[torch.Tensor]) -> torch.Tensor:
        return (self.weights(llm) @ self.prototypes).to(llm.pooled.dtype).unsqueeze(1)

    @classmethod
    def example_config(cls) -> dict:
        return {"prototypes": 4, "hidden": 16}
