"""pixel_shuffle: each token stacks exactly its k x k block; maps not divisible by k are zero-padded."""

from __future__ import annotations

import pytest
import torch

from components.compressors.pixel_shuffle import PixelShuffleCompressor
from framework.core.errors import ConfigError


@pytest.mark.parametrize(("h", "w", "row", "col", "token"), [(4, 4, 1, 1, 0), (5, 7, 4, 6, 11), (5, 7, 2, 1, 4)])
def test_a_position_reaches_only_its_block_token(h: int, w: int, row: int, col: int, token: int) -> None:
    compressor = PixelShuffleCompressor(in_channels=3, out_dim=4, ratio=4)
    feature = torch.randn(1, 3, h, w)
    changed = feature.clone()
    changed[0, 0, row, col] += 1.0
    with torch.no_grad():
        before, after = compressor(feature), compressor(changed)
    assert before.shape == (1, compressor.num_tokens(h, w), 4)
    differs = (before - after).abs().amax(-1)[0] > 0
    assert differs.nonzero().flatten().tolist() == [token]


def test_ratio_must_be_a_perfect_square() -> None:
    with pytest.raises(ConfigError, match="perfect square"):
        PixelShuffleCompressor(in_channels=3, out_dim=4, ratio=8)
