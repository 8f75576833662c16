"""Predictions back in the original image: undo the letterbox (``framework.data.transforms``) of mask outputs.

The reference stops at the 1024² letterboxed frame; a user wants the mask of *their* image.
The map is resampled once, straight from the frame (at any output stride) to the original pixel grid: each
original pixel centre is mapped through the letterbox geometry into the frame and read there bilinearly, so
cropping the padding and resizing are one interpolation, also where the box does not fall on the map's grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

Box = Sequence[int] | torch.Tensor  # (top, left, height, width) of the image inside the frame, in frame pixels


def resample_to_original(
    maps: torch.Tensor, boxes: Sequence[Box] | torch.Tensor, original_sizes: Sequence[tuple[int, int]],
    frame_size: int | None = None,
) -> list[torch.Tensor]:
    """Float maps [B,h,w] over a square letterboxed frame of ``frame_size`` pixels (default h: maps at full
    frame resolution; pass the frame size for maps at an output stride) -> B maps [H0_i,W0_i] (bilinear).

    ``boxes``: [B,4] or B tuples (top, left, height, width) as returned with the letterboxed image;
    ``original_sizes``: B pairs (H0, W0).
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be [B,H,W], got shape {tuple(maps.shape)}")
    if not len(boxes) == len(original_sizes) == maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps, {len(boxes)} boxes and {len(original_sizes)} original sizes")
    frame = maps.shape[-2] if frame_size is None else frame_size
    # maps of one geometry (box and native size: every inner tile of a scene) share one grid and one call
    groups: dict[tuple, list[int]] = {}
    for row, (box, size) in enumerate(zip(boxes, original_sizes, strict=True)):
        groups.setdefault((tuple(float(v) for v in box), tuple(int(v) for v in size)), []).append(row)
    out: list[torch.Tensor] = [maps[0]] * maps.shape[0]
    for ((top, left, box_h, box_w), (height, width)), rows in groups.items():
        # normalised frame coordinates (align_corners=False) of the original pixel centres
        ys = 2 * (top + (torch.arange(height, dtype=torch.float64) + 0.5) * box_h / height) / frame - 1
        xs = 2 * (left + (torch.arange(width, dtype=torch.float64) + 0.5) * box_w / width) / frame - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).to(maps.device, torch.float32)
        sampled = F.grid_sample(
            maps[rows, None].float(), grid[None].expand(len(rows), -1, -1, -1), mode="bilinear",
            padding_mode="border", align_corners=False,
        )
        for k, row in enumerate(rows):
            out[row] = sampled[k, 0]
    return out


def unletterbox(
    logits: torch.Tensor, boxes: Sequence[Box] | torch.Tensor, original_sizes: Sequence[tuple[int, int]],
    frame_size: int | None = None, threshold: float = 0.0,
) -> list[torch.Tensor]:
    """Mask logits [B,h,w] in the letterboxed frame -> B bool masks [H0_i,W0_i]: logits resampled bilinearly
    (``resample_to_original``), then ``> threshold`` (0 = sigmoid 0.5, as the reference).

    A bool mask [B,h,w] is accepted too (as logits ±1: a pixel follows the majority of its neighbours).
    """
    if logits.dtype == torch.bool:
        logits = logits.float() * 2 - 1
    return [m > threshold for m in resample_to_original(logits, boxes, original_sizes, frame_size)]


def unletterbox_probabilities(
    logits: torch.Tensor, boxes: Sequence[Box] | torch.Tensor, original_sizes: Sequence[tuple[int, int]],
    frame_size: int | None = None,
) -> list[torch.Tensor]:
    """Mask logits [B,h,w] in the letterboxed frame -> B probability maps [H0_i,W0_i] in [0,1]: the sigmoid of
    the resampled logits, so ``p > 0.5`` is exactly ``unletterbox``'s mask."""
    return [m.sigmoid() for m in resample_to_original(logits, boxes, original_sizes, frame_size)]


def disjoint_masks(masks: list[torch.Tensor], within: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Target masks bool [H,W], most probable first, as a partition of part of their answer's mask ``within`` bool
    [H,W]: (index in ``masks``, its own pixels) of each target that keeps pixels inside ``within`` that no earlier
    target has; a target left with none is dropped."""
    taken = ~within
    kept = []
    for index, mask in enumerate(masks):
        own = mask & ~taken
        if own.any():
            taken = taken | own
            kept.append((index, own))
    return kept


def region_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The connected regions (8-connected) of a bool mask [H,W]: (labels int32 [H,W], 0 = none, 1..n; n)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, int(count)
