"""Sliding windows: the grid covers the scene, and blending reproduces any field the tiles agree on."""

import numpy as np
import pytest

from framework.core.errors import ConfigError
from framework.infer.tiling import TileBlender, axis_origins, axis_window


@pytest.mark.parametrize(("length", "tile", "overlap"), [(6000, 2048, 512), (100, 32, 8), (33, 32, 8), (32, 32, 8)])
def test_origins_cover_the_axis_with_the_last_tile_flush(length, tile, overlap):
    origins = axis_origins(length, tile, overlap)
    assert origins[0] == 0 and origins[-1] == max(0, length - tile)
    assert all(b - a <= tile - overlap for a, b in zip(origins, origins[1:]))  # neighbours share >= overlap
    covered = np.zeros(length, bool)
    for origin in origins:
        covered[origin : origin + tile] = True
    assert covered.all()


def test_window_tapers_only_shared_edges_and_stays_positive():
    window = axis_window(16, 4, taper_start=True, taper_end=False)
    assert (window > 0).all() and window[0] < window[3] < 1 and (window[4:] == 1).all()
    assert (axis_window(16, 4, False, False) == 1).all()


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), [(70, 130, 32, 8), (50, 20, 32, 8), (64, 64, 64, 0)])
def test_blending_tiles_that_agree_gives_back_the_field(height, width, tile, overlap):
    """Each tile reports the crop of one smooth field: the blend is that field exactly, seams included."""
    rows, cols = np.mgrid[0:height, 0:width]
    field = np.sin(rows / 7.0) + np.cos(cols / 5.0)
    blender = TileBlender(height, width, tile, overlap)
    for index, t in enumerate(blender.tiles):
        blender.add(index, field[t.top : t.top + t.height, t.left : t.left + t.width])
    np.testing.assert_allclose(blender.result(), field, rtol=0, atol=1e-5)


def test_overlapping_logits_are_blended_not_overwritten():
    """Two tiles disagreeing (+1 / -1) meet smoothly: the blend crosses 0 inside the overlap, monotonically."""
    blender = TileBlender(8, 24, 16, 8)
    assert [(t.top, t.left) for t in blender.tiles] == [(0, 0), (0, 8)]
    blender.add(0, np.ones((8, 16)))
    blender.add(1, -np.ones((8, 16)))
    row = blender.result()[0]
    assert (row[:8] == 1).all() and (row[16:] == -1).all()
    assert (np.diff(row[8:16]) < 0).all() and row[8] > 0 > row[15]


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="overlap < tile"):
        TileBlender(10, 10, 8, 8)
