"""conv_stride: the reference connector's shape and size, ratio -> number of stride-2 convs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.compressors.conv_stride import ConvStrideCompressor
from framework.core.errors import ConfigError
from tests.golden import assert_golden, set_weights


def test_faithful_reference_shape_and_parameter_count() -> None:
    torch.manual_seed(0)
    compressor = ConvStrideCompressor(in_channels=1024, out_dim=2048, ratio=16)
    # Conv 1024->2048 3x3, norm, conv 2048->2048 3x3, norm, conv 2048->2048 1x1: no activation in between.
    assert [type(m) for m in compressor.body] == [nn.Conv2d, nn.GroupNorm, nn.Conv2d, nn.GroupNorm, nn.Conv2d]
    expected = (1024 * 9 + 1) * 2048 + 2 * 2048 + (2048 * 9 + 1) * 2048 + 2 * 2048 + (2048 + 1) * 2048
    assert sum(p.numel() for p in compressor.parameters()) == expected == 60_831_744
    with torch.no_grad():
        tokens = compressor(torch.randn(1, 1024, 32, 32))
    assert tokens.shape == (1, 64, 2048)


@pytest.mark.parametrize(("ratio", "tokens"), [(4, 256), (16, 64), (64, 16)])
def test_ratio_sets_positions_per_token(ratio: int, tokens: int) -> None:
    compressor = ConvStrideCompressor(in_channels=8, out_dim=8, ratio=ratio)
    assert compressor.num_tokens(32, 32) == tokens == 32 * 32 // ratio
    with torch.no_grad():
        assert compressor(torch.randn(1, 8, 32, 32)).shape == (1, tokens, 8)


def test_odd_sizes_round_up() -> None:
    compressor = ConvStrideCompressor(in_channels=8, out_dim=8, ratio=16)
    assert compressor.num_tokens(5, 7) == 2 * 2  # 5 -> 3 -> 2, 7 -> 4 -> 2


@pytest.mark.parametrize("ratio", [0, 1, 2, 8, 32, 48])
def test_ratio_must_be_a_power_of_four(ratio: int) -> None:
    with pytest.raises(ConfigError, match="power of 4"):
        ConvStrideCompressor(in_channels=8, out_dim=8, ratio=ratio)


def test_golden_output() -> None:
    """Fixed weights and input: catches silent numerical changes of the faithful compressor."""
    compressor = ConvStrideCompressor(in_channels=16, out_dim=24, ratio=16)
    set_weights(compressor, 11)
    x = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        assert_golden(compressor(x), [-0.008442, 0.153399, 0.186895, 0.024071, 0.013325, 0.146586])
