"""none: one token per position, row-major, each a linear map of its own feature vector."""

from __future__ import annotations

import torch

from components.compressors.none import NoCompression


def test_tokens_are_positions_in_row_major_order() -> None:
    compressor = NoCompression(in_channels=3, out_dim=4)
    feature = torch.randn(2, 3, 2, 5)
    with torch.no_grad():
        tokens = compressor(feature)
        assert tokens.shape == (2, compressor.num_tokens(2, 5), 4) == (2, 10, 4)
        assert torch.allclose(tokens[:, 1 * 5 + 3], compressor.proj(feature[:, :, 1, 3]))
