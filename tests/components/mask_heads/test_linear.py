"""linear: a per-pixel read-out (no spatial context at the finest level), the empty-mask prior at init, the question
only in the dot product."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.mask_heads.linear import LinearMaskHead

CHANNELS, STRIDES = [8, 12, 16, 20], [4, 8, 16, 32]


def head() -> LinearMaskHead:
    torch.manual_seed(0)
    return LinearMaskHead(in_channels=CHANNELS, strides=STRIDES, query_dim=16, dim=16)


def features(size: int = 64) -> list[torch.Tensor]:
    return [torch.randn(2, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES, strict=True)]


def test_pixel_features_are_one_linear_map_of_the_concatenated_upsampled_levels() -> None:
    mask_head, maps = head(), features()
    size = maps[0].shape[-2:]
    stacked = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
    weight = torch.cat([p.weight for p in mask_head.project], dim=1)
    bias = sum(p.bias for p in mask_head.project)
    with torch.no_grad():
        torch.testing.assert_close(mask_head.pixel_features(maps), F.conv2d(stacked, weight, bias), atol=1e-5, rtol=1e-5)


def test_a_finest_level_change_moves_only_its_own_pixel() -> None:
    mask_head, maps = head(), features()
    queries = torch.randn(2, 1, 16)
    other = [m.clone() for m in maps]
    other[0][:, :, 5, 7] += 3.0
    with torch.no_grad():
        changed = (mask_head(other, queries).masks - mask_head(maps, queries).masks).abs() > 1e-6
    assert changed[:, 0, 5, 7].all() and changed.sum() == 2


def test_initial_logits_predict_empty() -> None:
    with torch.no_grad():
        masks = head()(features(), torch.randn(2, 1, 16)).masks
    assert -2.3 < masks.mean() < -1.7 and masks.std() < 0.3


def test_the_question_enters_only_through_the_dot_product() -> None:
    mask_head, maps = head(), features(96)
    queries = torch.randn(2, 2, 16)
    other = queries.clone()
    other[:, 1] = torch.randn(2, 16)
    with torch.no_grad():
        out = mask_head(maps, queries)
        assert out.masks.shape == (2, 2, 24, 24) and out.aux == []
        torch.testing.assert_close(out.masks, mask_head.decode(mask_head.pixel_features(maps), queries).masks)
        torch.testing.assert_close(mask_head(maps, other).masks[:, 0], out.masks[:, 0])
        assert not torch.allclose(mask_head(maps, other).masks[:, 1], out.masks[:, 1])


def test_pixel_norm_makes_each_pixel_invariant_to_the_scale_and_offset_of_its_features() -> None:
    torch.manual_seed(0)
    normed = LinearMaskHead(in_channels=CHANNELS, strides=STRIDES, query_dim=16, dim=16, pixel_norm=True)
    maps, queries = features(), torch.randn(2, 1, 16)
    darker = [m.clone() for m in maps]
    for level in darker:  # one pixel per level scaled down and shifted, as a darker patch would be
        level[:, :, 1, 1] = 0.2 * level[:, :, 1, 1] - 0.5
    with torch.no_grad():
        torch.testing.assert_close(normed(darker, queries).masks, normed(maps, queries).masks, atol=1e-4, rtol=1e-4)
        plain = LinearMaskHead(in_channels=CHANNELS, strides=STRIDES, query_dim=16, dim=16)
        plain.load_state_dict(normed.state_dict())
        assert not torch.allclose(plain(darker, queries).masks, plain(maps, queries).masks, atol=1e-3)
