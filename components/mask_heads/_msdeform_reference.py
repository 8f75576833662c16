"""Multi-scale deformable attention written out directly, as the yardstick for the fast implementation.

A loop over levels, sampling points and the four bilinear corners, with explicit corner weights and gathers
(no ``grid_sample``). Used by tests and benchmarks only: it is slow and memory-hungry by design.
"""

from __future__ import annotations

import torch


def multi_scale_deformable_attention_reference(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention with bilinear sampling, zero outside the map, pixel centres at (i + 0.5) / size.

    value [B,S,M,D] (S = sum of h*w over levels, levels concatenated row-major), spatial_shapes [(h, w)] per
    level, sampling_locations [B,Q,M,L,P,2] as (x, y) in [0, 1] of the level's width and height,
    attention_weights [B,Q,M,L,P] -> [B,Q,M*D].
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    out = value.new_zeros(batch, queries, heads, head_dim)
    batch_index = torch.arange(batch, device=value.device)[:, None, None]
    head_index = torch.arange(heads, device=value.device)[None, None, :]
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = value[:, start : start + height * width]  # [B,h*w,M,D]
        start += height * width
        for point in range(points):
            x = sampling_locations[:, :, :, level, point, 0] * width - 0.5  # [B,Q,M], in pixel units
            y = sampling_locations[:, :, :, level, point, 1] * height - 0.5
            x0, y0 = torch.floor(x), torch.floor(y)
            for corner_x in (x0, x0 + 1):
                for corner_y in (y0, y0 + 1):
                    bilinear = (1 - (x - corner_x).abs()) * (1 - (y - corner_y).abs())
                    inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
                    flat = (corner_y.clamp(0, height - 1) * width + corner_x.clamp(0, width - 1)).long()
                    sampled = level_value[batch_index, flat, head_index]  # [B,Q,M,D]
                    weight = attention_weights[:, :, :, level, point] * bilinear * inside
                    out += weight[..., None] * sampled
    return out.reshape(batch, queries, heads * head_dim)
