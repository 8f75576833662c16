"""mlp: the query depends on the description only."""

from __future__ import annotations

import torch

from components.projectors.mlp import MLPProjector
from framework.core.contracts import LLMOutput


def test_query_ignores_the_image_features() -> None:
    projector = MLPProjector(text_dim=6, feature_channels=[3], feature_strides=[4], out_dim=5, hidden=8)
    pooled = torch.randn(2, 6)
    llm = LLMOutput(pooled=pooled, tokens=pooled[:, None], token_mask=torch.ones(2, 1, dtype=torch.bool))
    with torch.no_grad():
        first = projector(llm, [torch.randn(2, 3, 4, 4)])
        second = projector(llm, [torch.randn(2, 3, 8, 8)])
    assert first.shape == (2, 1, 5)
    assert torch.equal(first, second)
