"""Mask head ``fpn``: a light query-conditioned FPN, cheap enough to train on a CPU beside EfficientNet-Lite."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from components.mask_heads._readout import query_embedding
from framework.core.contracts import MaskHead, MaskHeadOutput
from framework.core.registry import MASK_HEADS


@MASK_HEADS.register("fpn")
class FPNMaskHead(MaskHead):
    """Top-down FPN; masks are query . pixel dot products.

    Coarsest to finest level i: x = lateral_i(f_i) + upsample(x); x = ReLU(GN(sepconv3x3(x'))) with, when ``film``,
    x' = x * (1 + gamma_i) + beta_i, (gamma_i, beta_i) = Linear_i(query) (the mean over queries when Q > 1: one
    feature map serves all queries), else x' = x. Each level's x gives a prediction
    einsum(MLP(query) [B,Q,dim], x [B,dim,h_i,w_i]) + bias; the finest is the output, the coarser ones, upsampled to
    its size, are ``aux`` (coarsest first). The bias starts at ``init_bias`` and the embedding near zero, so the
    first predictions say "empty".

    Question-independent part (``pixel_features``, run once per distinct image by the model): the lateral
    projections with ``film``, the whole top-down path without it (then the question only enters the final dot
    product, as in Mask2Former's pixel decoder, and asking k questions of an image costs one FPN pass).
    ``forward(features [[B,C_i,H/s_i,W/s_i]], queries [B,Q,query_dim]) -> MaskHeadOutput(masks [B,Q,H/s_0,W/s_0],
    aux: len(features) - 1 tensors of that shape)``; ``output_stride`` = s_0 (4 for every encoder here).
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        query_dim: int = 256,
        dim: int = 128,
        init_bias: float = -2.0,
        film: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"{len(in_channels)} channel counts for {len(strides)} strides")
        self.query_dim = query_dim
        self.output_stride = strides[0]
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.film = nn.ModuleList(nn.Linear(query_dim, 2 * dim) for _ in in_channels) if film else None
        # Depthwise-separable 3x3 convs: a dense 3x3 at stride 4 would cost a large share of EfficientNet-Lite0's
        # forward + backward on a CPU (docs/results/performance.md).
        self.smooth = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False),
                nn.Conv2d(dim, dim, kernel_size=1, bias=False),
                nn.GroupNorm(math.gcd(32, dim), dim),
                nn.ReLU(inplace=True),
            )
            for _ in in_channels
        )
        self.mask_embed = query_embedding(query_dim, dim)
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def pixel_features(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, coarsest first, [B,dim,h_i,w_i]: the lateral projections (``film``) or the FPN's outputs."""
        laterals = [self.lateral[i](features[i]) for i in reversed(range(len(features)))]
        return laterals if self.film is not None else self._top_down(laterals, None)

    def decode(self, pixels: list[torch.Tensor], queries: torch.Tensor) -> MaskHeadOutput:
        """Masks from ``pixel_features``' output and the queries [B,Q,query_dim]."""
        levels = pixels if self.film is None else self._top_down(pixels, queries.mean(dim=1))
        embed = self.mask_embed(queries)  # [B,Q,dim]
        predictions = [torch.einsum("bqc,bchw->bqhw", embed, x) + self.bias for x in levels]
        size = predictions[-1].shape[-2:]
        aux = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in predictions[:-1]]
        return MaskHeadOutput(masks=predictions[-1], aux=aux)

    def _top_down(self, laterals: list[torch.Tensor], film_query: torch.Tensor | None) -> list[torch.Tensor]:
        """Laterals coarsest first -> the smoothed map of every level, coarsest first (FiLM by [B,query_dim])."""
        x: torch.Tensor | None = None
        levels = []
        for j, lateral in enumerate(laterals):
            i = len(laterals) - 1 - j  # the level's index in the encoder's (finest first) order
            if x is not None:
                lateral = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            if film_query is not None:
                gamma, beta = self.film[i](film_query)[:, :, None, None].chunk(2, dim=1)
                lateral = lateral * (1 + gamma) + beta
            x = self.smooth[i](lateral)
            levels.append(x)
        return levels

    @classmethod
    def example_config(cls) -> dict:
        return {"query_dim": 32, "dim": 16}
