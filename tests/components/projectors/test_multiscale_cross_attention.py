"""multiscale_cross_attention: one media projection per level, every level reaches the query."""

from __future__ import annotations

import pytest
import torch

from components.projectors.multiscale_cross_attention import MultiscaleCrossAttentionProjector
from framework.core.contracts import LLMOutput
from framework.core.errors import ConfigError

CHANNELS, STRIDES = [3, 4, 5, 6], [4, 8, 16, 32]


def build(levels: list[int]) -> MultiscaleCrossAttentionProjector:
    return MultiscaleCrossAttentionProjector(
        text_dim=6, feature_channels=CHANNELS, feature_strides=STRIDES, out_dim=7, levels=levels, dim=8, heads=2,
        dim_head=4,
    )


def test_default_levels_are_the_three_coarsest() -> None:
    projector = MultiscaleCrossAttentionProjector(
        text_dim=6, feature_channels=CHANNELS, feature_strides=STRIDES, out_dim=7, dim=8, heads=2, dim_head=4
    )
    assert projector.levels == [1, 2, 3]
    assert [m.in_features for m in projector.media] == [4, 5, 6]


def test_every_chosen_level_changes_the_query() -> None:
    torch.manual_seed(0)
    projector = build([0, -1])
    pooled = torch.randn(1, 6)
    llm = LLMOutput(pooled=pooled, tokens=pooled[:, None], token_mask=torch.ones(1, 1, dtype=torch.bool))
    features = [torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(CHANNELS, STRIDES, strict=True)]
    with torch.no_grad():
        base = projector(llm, features)
        for level, used in ((0, True), (1, False), (2, False), (3, True)):
            moved = list(features)
            moved[level] = torch.randn_like(features[level])
            assert (not torch.allclose(projector(llm, moved), base)) == used, level


@pytest.mark.parametrize(("levels", "message"), [([4], "level 4 is not"), ([-1, 3], "distinct"), ([], "non-empty")])
def test_bad_levels_are_config_errors(levels: list[int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(levels)
