"""avg_pool: k x k windows, partial edge windows average real positions only."""

from __future__ import annotations

import pytest
import torch

from components.compressors.avg_pool import AvgPoolCompressor
from framework.core.errors import ConfigError


def test_partial_edge_windows_are_not_diluted_by_padding() -> None:
    compressor = AvgPoolCompressor(in_channels=3, out_dim=4, ratio=4)
    with torch.no_grad():
        tokens = compressor(torch.full((1, 3, 5, 7), 3.0))
    assert tokens.shape == (1, 3 * 4, 4)
    assert torch.allclose(tokens, tokens[:, :1].expand_as(tokens))


def test_each_token_sees_its_own_window_only() -> None:
    compressor = AvgPoolCompressor(in_channels=3, out_dim=4, ratio=9)
    feature = torch.randn(1, 3, 6, 6)
    changed = feature.clone()
    changed[0, 0, 4, 5] += 1.0  # window (1, 1); one channel, as LayerNorm ignores a shift of all channels
    with torch.no_grad():
        differs = (compressor(feature) - compressor(changed)).abs().amax(-1) > 0
    assert differs.tolist() == [[False, False, False, True]]


@pytest.mark.parametrize("ratio", [0, 2, 8])
def test_ratio_must_be_a_perfect_square(ratio: int) -> None:
    with pytest.raises(ConfigError, match="perfect square"):
        AvgPoolCompressor(in_channels=3, out_dim=4, ratio=ratio)
