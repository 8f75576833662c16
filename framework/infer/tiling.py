"""Sliding windows over a scene of any size, and the blending of per-tile logits where tiles overlap.

Tiles form a regular grid: along each axis, the fewest tiles that overlap by at least ``overlap`` pixels, spread
evenly from the scene's first pixel to flush with its last. Each tile's logits are weighted by a separable window that
rises as a cosine ramp over ``overlap`` pixels at every edge shared with a neighbour and is 1 elsewhere (scene
edges are not tapered), then summed. Because the window is separable and the tiles form a full grid, the sum of
the weights at a pixel is the product of two 1-D sums: the normalisation needs no scene-sized weight array, and
memory beyond the output is one tile batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from framework.core.errors import ConfigError


@dataclass(frozen=True)
class Tile:
    """A window of the scene: ``top``, ``left``, ``height``, ``width`` in pixels."""

    top: int
    left: int
    height: int
    width: int


def axis_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets along one axis of ``length`` pixels: the fewest tiles that overlap by at least ``overlap``,
    spread evenly from 0 to flush with the end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def axis_window(size: int, ramp: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """float32 [size] blending weights: a raised-cosine ramp over ``ramp`` pixels at each tapered end, 1 between;
    strictly positive, so every pixel keeps weight from each tile that covers it."""
    weights = np.ones(size, dtype=np.float32)
    ramp = min(ramp, size // 2)
    if ramp > 0:
        rising = np.sin(0.5 * np.pi * (np.arange(ramp, dtype=np.float32) + 0.5) / ramp) ** 2
        if taper_start:
            weights[:ramp] = rising
        if taper_end:
            weights[size - ramp :] = rising[::-1]
    return weights


class TileBlender:
    """Accumulates weighted tile logits into one float32 [H,W] map; ``result()`` divides by the summed weights.

    ``tile``: tile side in pixels (clipped to the scene), ``overlap``: pixels shared by neighbouring tiles;
    ``tiles``: the row-major grid of ``Tile`` s.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int) -> None:
        if tile < 1 or not 0 <= overlap < tile:
            raise ConfigError(f"tiling: need tile >= 1 and 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
        self.height, self.width = height, width
        self.rows = axis_origins(height, tile, overlap)
        self.cols = axis_origins(width, tile, overlap)
        self.tile_h, self.tile_w = min(tile, height), min(tile, width)
        self._row_weights = [
            axis_window(self.tile_h, overlap, i > 0, i < len(self.rows) - 1) for i in range(len(self.rows))
        ]
        self._col_weights = [
            axis_window(self.tile_w, overlap, j > 0, j < len(self.cols) - 1) for j in range(len(self.cols))
        ]
        self._sum = np.zeros((height, width), dtype=np.float32)
        # row-major grid of tiles, made once: callers index it per tile (a scene may have thousands)
        self.tiles = [Tile(top, left, self.tile_h, self.tile_w) for top in self.rows for left in self.cols]

    def add(self, index: int, logits: np.ndarray) -> None:
        """Add the float [tile_h,tile_w] logits of tile number ``index`` (in ``tiles`` order)."""
        i, j = divmod(index, len(self.cols))
        top, left = self.rows[i], self.cols[j]
        weight = self._row_weights[i][:, None] * self._col_weights[j][None, :]
        self._sum[top : top + self.tile_h, left : left + self.tile_w] += logits * weight

    def _axis_totals(self, length: int, origins: list[int], size: int, windows: list[np.ndarray]) -> np.ndarray:
        total = np.zeros(length, dtype=np.float32)
        for origin, window in zip(origins, windows, strict=True):
            total[origin : origin + size] += window
        return total

    def result(self) -> np.ndarray:
        """float32 [H,W] blended logits (the accumulator, divided in place)."""
        rows = self._axis_totals(self.height, self.rows, self.tile_h, self._row_weights)
        cols = self._axis_totals(self.width, self.cols, self.tile_w, self._col_weights)
        for start in range(0, self.height, 1024):  # row blocks: no second scene-sized array
            block = slice(start, start + 1024)
            self._sum[block] /= rows[block, None] * cols[None, :]
        return self._sum
