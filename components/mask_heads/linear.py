"""Mask head ``linear``: a per-pixel linear read-out of every pyramid level, queried by a dot product."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.mask_heads._readout import query_embedding
from framework.core.contracts import MaskHead, MaskHeadOutput
from framework.core.registry import MASK_HEADS


@MASK_HEADS.register("linear")
class LinearMaskHead(MaskHead):
    """pixels = sum_i upsample(Conv1x1_i(f_i)) [B,dim,H/s_0,W/s_0]: one linear map of the concatenated, upsampled
    levels (SegFormer's all-MLP decoder without its fusion layer; the 1x1 runs before the bilinear upsampling, which
    is linear too, so nothing is computed at full size but the sum). masks = einsum(MLP(query) [B,Q,dim], pixels)
    + bias, the bias starting at ``init_bias`` and the embedding near zero (first predictions "empty").

    No spatial kernel and no nonlinearity lie between the encoder and the dot product: a pixel is judged by its own
    multi-scale feature vector, not by its surroundings. With a frozen encoder this is a linear probe whose class
    vectors come from the question; on the Dubai tiles (docs/results/dubai.md) that is what carries a class to an unseen tile
    whose look differs from the training tiles'.

    ``pixel_norm``: each level's feature vector is layer-normalised per pixel (over channels, no affine) before its
    1x1, so a pixel's logit depends on the direction of its features, not their magnitude (a darker or lower-contrast
    tile otherwise pulls every logit towards the bias).

    ``pixel_features(features)`` is question-independent (one pass per distinct image); ``forward(features
    [[B,C_i,H/s_i,W/s_i]], queries [B,Q,query_dim]) -> MaskHeadOutput(masks [B,Q,H/s_0,W/s_0], aux [])``.
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        query_dim: int = 256,
        dim: int = 128,
        init_bias: float = -2.0,
        pixel_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"{len(in_channels)} channel counts for {len(strides)} strides")
        self.query_dim = query_dim
        self.output_stride = strides[0]
        self.pixel_norm = pixel_norm
        self.project = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.mask_embed = query_embedding(query_dim, dim)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def pixel_features(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[B,dim,H/s_0,W/s_0]: the summed per-level projections at the finest level's size."""
        if self.pixel_norm:
            features = [F.layer_norm(level.movedim(1, -1), level.shape[1:2]).movedim(-1, 1) for level in features]
        size = features[0].shape[-2:]
        pixels = self.project[0](features[0])
        for project, level in zip(self.project[1:], features[1:], strict=True):
            pixels = pixels + F.interpolate(project(level), size=size, mode="bilinear", align_corners=False)
        return pixels

    def decode(self, pixels: torch.Tensor, queries: torch.Tensor) -> MaskHeadOutput:
        """Masks from ``pixel_features``' output and the queries [B,Q,query_dim]."""
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), pixels) + self.bias
        return MaskHeadOutput(masks=masks)

    @classmethod
    def example_config(cls) -> dict:
        return {"query_dim": 32, "dim": 16}
