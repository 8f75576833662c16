"""Shapes on the (S, S) pixel grid: rasterised polygons, bands, rectangles and blobs, Bezier curves and
resampled polylines, local/image coordinate maps, and mask operations (dilation, boundary pixels, union)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw


def _flat(points: np.ndarray) -> list[float]:
    return np.asarray(points, dtype=np.float64).ravel().tolist()


def _draw_mask(size: int, draw: Callable[[ImageDraw.ImageDraw], object]) -> np.ndarray:
    """Rasterise whatever ``draw(ImageDraw)`` paints with fill 255 into an (S, S) bool mask."""
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _polygon_mask(size: int, polygon: np.ndarray) -> np.ndarray:
    return _draw_mask(size, lambda d: d.polygon(_flat(polygon), fill=255))


def _band_mask(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """A band of ``width`` around a smooth polyline (k, 2), rasterised as one polygon (curvature >> width)."""
    tangent = np.gradient(points, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=-1) / np.hypot(tangent[:, :1], tangent[:, 1:])
    offset = normal * (width / 2)
    return _polygon_mask(size, np.concatenate([points + offset, (points - offset)[::-1]]))


def _rect(centre: np.ndarray, length: float, depth: float, angle: float) -> np.ndarray:
    """Corners (4, 2) of a rectangle with ``length`` along ``angle`` and ``depth`` across it."""
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * [length / 2, depth / 2]
    return _to_world(local, centre, angle)


def _to_world(local: np.ndarray, centre: np.ndarray, angle: float) -> np.ndarray:
    """Map local (u along ``angle``, v across) coordinates (..., 2) to image (x, y)."""
    c, s = math.cos(angle), math.sin(angle)
    u, v = local[..., 0], local[..., 1]
    return np.stack([centre[0] + u * c - v * s, centre[1] + u * s + v * c], axis=-1)


def _to_local(xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xs - centre[0], ys - centre[1]
    return dx * c + dy * s, -dx * s + dy * c


def _blob_shape(rng: np.random.Generator, roughness: float, points: int = 48) -> np.ndarray:
    """Relative radius (points,) of an irregular closed outline: a circle perturbed by low harmonics."""
    theta = np.linspace(0, 2 * np.pi, points, endpoint=False)
    radius = np.ones(points)
    for k in range(2, 7):
        radius += roughness / k * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.maximum(radius, 0.3)


def _blob_polygon(centre: np.ndarray, radius: float, shape: np.ndarray, pad: float = 0.0) -> np.ndarray:
    theta = np.linspace(0, 2 * np.pi, len(shape), endpoint=False)
    r = radius * shape + pad
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=-1)


def _bezier(control: np.ndarray, samples: int) -> np.ndarray:
    """Points (samples, 2) on the Bezier curve with control points (m, 2)."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    m = len(control) - 1
    return sum(math.comb(m, i) * t**i * (1 - t) ** (m - i) * control[i] for i in range(m + 1))


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Points spaced ``step`` apart along a polyline, with their unit tangents; both (k, 2)."""
    seg = np.diff(points, axis=0)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    s = np.arange(0.0, arc[-1], step)
    resampled = np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], axis=-1)
    tangent = np.gradient(resampled, axis=0)
    return resampled, tangent / np.maximum(np.hypot(tangent[:, :1], tangent[:, 1:]), 1e-9)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square dilation by ``radius`` pixels."""
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        for shift in range(1, radius + 1):
            if axis == 0:
                grown[shift:] |= out[:-shift]
                grown[:-shift] |= out[shift:]
            else:
                grown[:, shift:] |= out[:, :-shift]
                grown[:, :-shift] |= out[:, shift:]
        out = grown
    return out


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    """(k, 2) x, y of mask pixels with a non-mask 8-neighbour (outside the image counts as non-mask)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return np.zeros((0, 2), dtype=np.float32)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1)
    edge = crop & _dilate(~crop, 1)
    ys, xs = np.nonzero(edge[1:-1, 1:-1])
    return np.stack([xs + x0, ys + y0], axis=-1).astype(np.float32)


def _union(masks: list[np.ndarray], size: int) -> np.ndarray:
    """Pixelwise OR of (S, S) bool masks; all False for none."""
    out = np.zeros((size, size), dtype=bool)
    for mask in masks:
        out |= mask
    return out
