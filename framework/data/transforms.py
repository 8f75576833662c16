"""Letterboxing as the reference does it: longest side to ``size``, centre-padded with zeros.

Images come out as float tensors in [0, 1] (each encoder applies its own normalisation), masks as {0, 1}
bytes resized nearest-neighbour with the same geometry; ``box`` = (top, left, height, width) of the image inside
the padded frame, so predictions can be cut back out and resized to the original size.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def letterbox_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, new_height, new_width): the short side is truncated as in the reference."""
    if width >= height:
        new_w, new_h = size, max(1, int(height * size / width))
    else:
        new_h, new_w = size, max(1, int(width * size / height))
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def letterbox_image(image: Image.Image, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """RGB PIL image → ([3,size,size] float in [0,1], box)."""
    top, left, h, w = letterbox_geometry(image.height, image.width, size)
    resized = np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.uint8)
    frame = np.zeros((size, size, 3), dtype=np.uint8)
    frame[top : top + h, left : left + w] = resized
    return torch.from_numpy(frame).permute(2, 0, 1).float().div_(255.0), (top, left, h, w)


def letterbox_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Binary mask [H,W] → [size,size] uint8, nearest-neighbour."""
    top, left, h, w = letterbox_geometry(mask.shape[0], mask.shape[1], size)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST))
    frame = np.zeros((size, size), dtype=np.uint8)
    frame[top : top + h, left : left + w] = resized
    return torch.from_numpy(frame)


def box_mask(box: torch.Tensor, size: int) -> torch.Tensor:
    """[B,4] boxes (top, left, h, w) → [B,size,size] bool, True inside the image region."""
    rows = torch.arange(size, device=box.device)
    top, left, h, w = (box[:, i, None] for i in range(4))
    in_rows = (rows >= top) & (rows < top + h)
    in_cols = (rows >= left) & (rows < left + w)
    return in_rows[:, :, None] & in_cols[:, None, :]
