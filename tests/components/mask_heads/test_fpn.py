"""fpn: FiLM conditioning by the query (or none), the empty-mask prior at init, deep-supervision outputs."""

from __future__ import annotations

import torch

from components.mask_heads.fpn import FPNMaskHead

CHANNELS, STRIDES = [8, 12, 16, 20], [4, 8, 16, 32]


def head() -> FPNMaskHead:
    torch.manual_seed(0)
    return FPNMaskHead(in_channels=CHANNELS, strides=STRIDES, query_dim=16, dim=16)


def features(size: int = 64) -> list[torch.Tensor]:
    return [torch.randn(2, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES, strict=True)]


def test_film_lets_one_query_change_the_pixel_features_of_another() -> None:
    # Each query's own mask depends on it through the dot product anyway; query 1 can move query 0's mask only
    # through the FiLM-conditioned pixel features (FiLM uses the mean query).
    mask_head, maps = head(), features()
    queries = torch.randn(2, 2, 16)
    other = queries.clone()
    other[:, 1] = torch.randn(2, 16)
    with torch.no_grad():
        assert not torch.allclose(mask_head(maps, queries).masks[:, 0], mask_head(maps, other).masks[:, 0])
        for film in mask_head.film:
            film.weight.zero_()
        assert torch.allclose(mask_head(maps, queries).masks[:, 0], mask_head(maps, other).masks[:, 0])


def test_initial_logits_predict_empty() -> None:
    with torch.no_grad():
        masks = head()(features(), torch.randn(2, 1, 16)).masks
    assert -2.3 < masks.mean() < -1.7 and masks.std() < 0.3


def test_aux_predictions_come_from_each_coarser_level() -> None:
    with torch.no_grad():
        out = head()(features(96), torch.randn(2, 3, 16))
    assert out.masks.shape == (2, 3, 24, 24)
    assert len(out.aux) == len(CHANNELS) - 1 and all(a.shape == out.masks.shape for a in out.aux)
    assert not any(torch.allclose(a, out.masks) for a in out.aux)


def test_without_film_the_pixel_features_ignore_the_question() -> None:
    torch.manual_seed(0)
    mask_head = FPNMaskHead(in_channels=CHANNELS, strides=STRIDES, query_dim=16, dim=16, film=False)
    maps = features()
    assert mask_head.film is None
    queries = torch.randn(2, 2, 16)
    with torch.no_grad():
        pixels = mask_head.pixel_features(maps)
        assert [p.shape[-1] for p in pixels] == [2, 4, 8, 16]  # coarsest first, every level smoothed
        out = mask_head(maps, queries)
        torch.testing.assert_close(out.masks, mask_head.decode(pixels, queries).masks)
        # the question enters only through the dot product: each query's mask ignores the other query
        other = queries.clone()
        other[:, 1] = torch.randn(2, 16)
        torch.testing.assert_close(mask_head(maps, other).masks[:, 0], out.masks[:, 0])
