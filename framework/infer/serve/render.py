"""The pictures of the page: a preview of the scene (JPEG) and, per answer, a transparent PNG of the same size with
the mask filled translucent and outlined in the answer's colour. The browser stacks layers over the preview, so one
preview serves every answer and the combined view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from framework.eval.overlays import PALETTE, hex_rgb, outline

PREVIEW_MAX_SIDE = 1024  # larger scenes are shown downscaled; the downloads keep full size
FILL_ALPHA = 110


def colour_of(index: int) -> str:
    """The colour of the ``index``-th answer of an image (the palette repeats past its end)."""
    return PALETTE[index % len(PALETTE)]


def preview_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) of the preview of a [height, width] scene."""
    factor = min(1.0, PREVIEW_MAX_SIDE / max(height, width))
    return max(1, round(width * factor)), max(1, round(height * factor))


def write_preview(pixels: np.ndarray, path: Path) -> None:
    """uint8 [H,W,3] -> a JPEG of ``preview_size``."""
    image = Image.fromarray(pixels)
    size = preview_size(*pixels.shape[:2])
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    image.save(path, quality=90)


def write_layer(mask: np.ndarray, colour: str, path: Path) -> None:
    """bool [H,W] -> an RGBA PNG of ``preview_size``: translucent ``colour`` (``#rrggbb``) on the mask, opaque on
    its outline, transparent elsewhere."""
    size = preview_size(*mask.shape)
    if size != (mask.shape[1], mask.shape[0]):
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    rgb = hex_rgb(colour)
    layer = np.zeros((*mask.shape, 4), np.uint8)
    layer[mask] = (*rgb, FILL_ALPHA)
    layer[outline(mask, max(1, round(min(mask.shape) / 256)))] = (*rgb, 255)
    Image.fromarray(layer, "RGBA").save(path)
