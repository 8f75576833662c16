"""The Swin encoder: shapes at several sizes, the reference's windowing, weights loading, golden outputs, Swin-B."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from components.encoders.swin import SwinEncoder, _PadThenShiftBlock
from framework.core.errors import ConfigError
from tests.golden import assert_golden, set_weights


def nano() -> SwinEncoder:
    torch.manual_seed(0)
    return SwinEncoder(**SwinEncoder.example_config()).eval()


@pytest.mark.parametrize("height,width", [(64, 64), (96, 160)])
def test_four_maps_at_strides_4_to_32(height: int, width: int) -> None:
    encoder = nano()
    with torch.no_grad():
        features = encoder(torch.rand(2, 3, height, width))
    assert encoder.channels == [32, 64, 128, 256] and encoder.strides == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in features] == [
        (2, c, height // s, width // s) for c, s in zip(encoder.channels, encoder.strides, strict=True)
    ]
    assert all(f.is_contiguous() for f in features)


def test_each_stage_has_its_own_layer_norm() -> None:
    encoder = nano()
    with torch.no_grad():
        for i in range(4):
            getattr(encoder, f"norm{i}").bias.fill_(float(i + 1))
        features = encoder(torch.rand(1, 3, 64, 64))
    # a LayerNorm with unit weight leaves mean 0 over channels: the bias shows through as the channel mean
    for i, feature in enumerate(features):
        assert torch.allclose(feature.mean(dim=1), torch.full_like(feature[:, 0], i + 1.0), atol=1e-4)


def test_shifted_windows_never_join_opposite_borders() -> None:
    """A 12x12 grid with window 7 is padded to 14: padding before the shift (the reference's order) keeps the
    top-left token out of reach of the bottom-right one; shifting before padding (timm's) lets them attend."""
    torch.manual_seed(0)
    block = _PadThenShiftBlock(
        dim=8, input_resolution=(12, 12), num_heads=2, window_size=7, shift_size=3, always_partition=True,
        dynamic_mask=True,
    ).eval()
    x = torch.randn(1, 12, 12, 8)
    change = torch.randn(8)  # not constant over channels, or the LayerNorm would remove it

    def influence_on_top_left(row: int, col: int) -> float:
        moved = x.clone()
        moved[0, row, col] += change
        with torch.no_grad():
            return (block(x)[0, 0, 0] - block(moved)[0, 0, 0]).abs().max().item()

    assert influence_on_top_left(1, 1) > 1e-3
    assert influence_on_top_left(11, 11) == influence_on_top_left(11, 0) == influence_on_top_left(0, 11) == 0.0


def test_weights_round_trip_and_original_swin_layout(tmp_path) -> None:
    source = nano()
    set_weights(source, seed=1)
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = source(images)
    state = source.state_dict()
    torch.save(state, tmp_path / "timm.pth")
    # the original Swin layout: merging at the end of the previous stage, inside a detector checkpoint
    original = {
        "backbone." + re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
        for k, v in state.items()
    }
    original["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    original["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(3, 3)
    torch.save({"model": original}, tmp_path / "original.pth")
    for name in ("timm.pth", "original.pth"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = SwinEncoder(variant="nano", weights=str(tmp_path / name)).eval()
        with torch.no_grad():
            for got, want in zip(loaded(images), expected, strict=True):
                torch.testing.assert_close(got, want)


def test_weights_problems_are_reported(tmp_path) -> None:
    state = nano().state_dict()
    wrong = dict(state, **{"norm0.weight": torch.ones(7)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match=r"norm0\.weight.*\(7,\).*\(32,\)"):
        SwinEncoder(variant="nano", weights=str(tmp_path / "wrong.pth"))
    partial = {k: v for k, v in state.items() if not k.startswith("norm3.")} | {"head.fc.weight": torch.ones(2, 2)}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.warns(UserWarning) as caught:
        SwinEncoder(variant="nano", weights=str(tmp_path / "partial.pth"))
    messages = " ".join(str(w.message) for w in caught)
    assert "norm3.weight" in messages and "head.fc.weight" in messages
    with pytest.raises(ConfigError, match="does not exist"):
        SwinEncoder(variant="nano", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="unknown swin variant 'huge'"):
        SwinEncoder(variant="huge")


# mean, mean |x|, RMS and three entries of each map; computed once with the code of 2026-11-27
GOLDEN = [
    [-0.0594191, 0.0937087, 0.130117, -0.0411067, 0.0325777, -0.0682377],
    [0.0391037, 0.102492, 0.138441, 0.0457641, 0.224391, 0.0167357],
    [0.0135842, 0.117965, 0.157604, -0.0659185, -0.0933573, -0.201884],
    [-0.00421282, 0.113065, 0.140649, -0.204474, -0.23971, 0.158744],
]


def test_golden_outputs() -> None:
    encoder = nano()
    set_weights(encoder, seed=2)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        features = encoder(images)
    for feature, golden in zip(features, GOLDEN, strict=True):
        assert_golden(feature, golden)


@pytest.mark.slow
def test_reference_swin_b_window_12() -> None:
    encoder = SwinEncoder(variant="base_w12").eval()
    assert sum(p.numel() for p in encoder.parameters()) == 86_880_376  # Swin-B without its classifier
    assert encoder.channels == [128, 256, 512, 1024]
    assert {b.attn.window_size for stage in encoder.layers for b in stage.blocks} == {(12, 12)}
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, 128, 128))
    assert [tuple(f.shape) for f in features] == [(1, 128, 32, 32), (1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4)]
