"""Position codes shared by components that attend over image grids."""

from __future__ import annotations

import math

import torch


def sine_position_encoding_2d(
    h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype, freqs: torch.Tensor | None = None
) -> torch.Tensor:
    """DETR-style 2-D sine encoding of an h x w grid, row-major: [h*w, dim] (dim divisible by 4).

    Coordinates are normalised to (0, 2*pi) so that a position keeps its code at any resolution.
    The first half of the channels encodes y (sin, cos), the second half x, each at the dim/4 ``freqs`` (default
    DETR's, 10000^(-i/(dim/4))).
    """
    quarter = dim // 4
    if freqs is None:
        freqs = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    y = (ys[:, None] * freqs)[:, None, :].expand(h, w, quarter)
    x = (xs[:, None] * freqs)[None, :, :].expand(h, w, quarter)
    encoding = torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=-1)
    return encoding.reshape(h * w, 4 * quarter).to(dtype)
