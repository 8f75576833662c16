"""Prediction overlays for reading an evaluation by eye: the image at its native resolution with the ground truth
outlined in green, the prediction filled translucent red and outlined (or, for an answer of several targets, each
target in its own colour of ``PALETTE``), and the question in a band below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from framework.data.samples import SampleDataset

GT_COLOUR = (0, 255, 0)
PRED_COLOUR = (255, 0, 0)
PRED_FILL_ALPHA = 0.4
CAPTION_COLOUR = (255, 255, 255)
CAPTION_MARGIN = 4
# distinct on aerial imagery and to most colour-blind readers (Trubetskoy's list of 20, first 8)
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> (r, g, b)."""
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def palette_rgb(index: int) -> tuple[int, int, int]:
    """The RGB of the ``index``-th colour of ``PALETTE`` (it repeats past its end)."""
    return hex_rgb(PALETTE[index % len(PALETTE)])


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """bool [H,W] -> bool [H,W]: the mask's pixels within ``width`` pixels of its border (the image edge counts as
    outside, so a region touching it is closed there too)."""
    eroded = Image.fromarray(np.pad(mask.astype(np.uint8) * 255, width))
    for _ in range(width):  # width 3x3 erosions = one (2 width + 1)^2 erosion, at 9 width instead of (2 width + 1)^2
        eroded = eroded.filter(ImageFilter.MinFilter(3))
    return mask & (np.asarray(eroded)[width:-width, width:-width] == 0)


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels (a single longer word keeps its own line)."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if lines[-1] and measure.textlength(candidate, font=font) > max_width:
            lines.append(word)
        else:
            lines[-1] = candidate
    return lines


def _coloured(prediction: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """(bool [H,W] region, its RGB colour) to draw for ``render_overlay``'s ``prediction``."""
    if prediction.dtype == bool:
        return [(prediction, PRED_COLOUR)]
    return [(prediction == k, palette_rgb(k - 1)) for k in np.unique(prediction) if k]


def render_overlay(
    image: np.ndarray, target: np.ndarray | None, prediction: np.ndarray, caption: str
) -> Image.Image:
    """uint8 [H,W,3] image, bool [H,W] target (None: no ground truth, as in ``segearth predict``) and prediction
    -> RGB image [H + caption band, W]. ``prediction`` is a bool mask, drawn red, or the integer id map [H,W] of an
    answer's targets (0 = none, k = target k), target k drawn in ``palette_rgb(k - 1)``."""
    height, width = prediction.shape
    line = max(1, round(min(height, width) / 256))  # outlines stay visible on large images
    pixels = image.astype(np.float32)
    for region, colour in _coloured(prediction):  # regions are disjoint: each one's fill and outline are its own
        pixels[region] = (1 - PRED_FILL_ALPHA) * pixels[region] + PRED_FILL_ALPHA * np.array(colour)
        pixels[outline(region, line)] = colour
    pixels = pixels.round().astype(np.uint8)
    if target is not None:
        pixels[outline(target, line)] = GT_COLOUR  # drawn last: the reference stays readable where both meet

    font = ImageFont.load_default(size=max(10, width // 40))
    lines = _wrap(caption, font, width - 2 * CAPTION_MARGIN)
    line_height = font.getbbox("Ag")[3] + 2
    band = len(lines) * line_height + 2 * CAPTION_MARGIN
    canvas = Image.new("RGB", (width, height + band))
    canvas.paste(Image.fromarray(pixels), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, text in enumerate(lines):
        draw.text((CAPTION_MARGIN, height + CAPTION_MARGIN + n * line_height), text, fill=CAPTION_COLOUR, font=font)
    return canvas


def write_overlays(dataset: SampleDataset, predictions: dict[int, np.ndarray], out_dir: Path) -> list[Path]:
    """One PNG per predicted sample id, ``<out_dir>/<stem>_<id>.png``, in id order; ``predictions`` holds bool
    [H0,W0] masks at the sample's native resolution. Returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in sorted(predictions):
        sample = dataset.samples[index]
        image, target = dataset.load(sample)
        prediction = predictions[index]
        union = np.logical_or(prediction, target).sum()
        iou = np.logical_and(prediction, target).sum() / union if union else 1.0
        path = out_dir / f"{sample.stem}_{index}.png"
        render_overlay(image, target, prediction, f"{sample.question}  (IoU {iou:.2f})").save(path)
        paths.append(path)
    return paths
