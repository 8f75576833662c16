"""perceiver: a fixed token count at any size, and positions matter (2-D sine encoding)."""

from __future__ import annotations

import pytest
import torch

from components.compressors.perceiver import PerceiverCompressor
from framework.core.errors import ConfigError
from framework.core.positions import sine_position_encoding_2d


def small() -> PerceiverCompressor:
    torch.manual_seed(0)
    return PerceiverCompressor(in_channels=3, out_dim=8, num_tokens=5, dim=16, depth=2, heads=2, dim_head=8)


def test_token_count_is_constant() -> None:
    compressor = small()
    with torch.no_grad():
        for h, w in ((4, 4), (9, 3)):
            assert compressor(torch.randn(2, 3, h, w)).shape == (2, 5, 8) and compressor.num_tokens(h, w) == 5


def test_moving_features_changes_the_tokens() -> None:
    compressor = small()
    feature = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        # Without a position code, attention is blind to a permutation of the positions.
        assert not torch.allclose(compressor(feature), compressor(feature.flip(-1)), atol=1e-4)


def test_sine_encoding_gives_every_position_its_own_code() -> None:
    encoding = sine_position_encoding_2d(3, 5, 16, torch.device("cpu"), torch.float32)
    assert encoding.shape == (15, 16)
    assert torch.cdist(encoding, encoding).add(torch.eye(15)).min() > 1e-3


def test_dim_must_divide_by_four() -> None:
    with pytest.raises(ConfigError, match="divisible by 4"):
        PerceiverCompressor(in_channels=3, out_dim=8, dim=18)
