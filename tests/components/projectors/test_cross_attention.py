"""cross_attention: golden check of the reference D-Projector formula, written out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.projectors.cross_attention import CrossAttentionProjector
from framework.core.contracts import LLMOutput
from framework.core.errors import ConfigError

HEADS, DIM_HEAD, DIM = 2, 4, 8


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def direct(p: CrossAttentionProjector, pooled: torch.Tensor, level_map: torch.Tensor) -> torch.Tensor:
    """[B,text_dim], [B,C,h,w] -> [B,out_dim], one sample and one head at a time, no shared code."""
    attention, ff = p.fusion.layers[0]
    outputs = []
    for t, fmap in zip(pooled, level_map, strict=True):
        origin = p.origin.weight @ t + p.origin.bias
        latent = p.latent.weight @ t + p.latent.bias
        media = fmap.flatten(1).T @ p.media[0].weight.T + p.media[0].bias  # [h*w, DIM]
        media_n, latent_n = layer_norm(media, attention.norm_media), layer_norm(latent, attention.norm_latents)
        keys_in = torch.cat([media_n, latent_n[None]])  # K/V from the visual tokens AND the latent itself
        w_k, w_v = attention.to_kv.weight.split(HEADS * DIM_HEAD)
        heads = []
        for h in range(HEADS):
            rows = slice(h * DIM_HEAD, (h + 1) * DIM_HEAD)
            q = attention.to_q.weight[rows] @ latent_n
            k, v = keys_in @ w_k[rows].T, keys_in @ w_v[rows].T
            weights = torch.softmax(k @ q / DIM_HEAD**0.5, dim=0)
            heads.append(weights @ v)
        x = latent + attention.to_out.weight @ torch.cat(heads)  # residual on the un-normalised latent
        x = x + ff[3].weight @ F.gelu(ff[1].weight @ layer_norm(x, ff[0]))
        fused = layer_norm(x, p.fusion.norm)
        outputs.append(p.out.weight @ torch.cat([origin, fused]) + p.out.bias)
    return torch.stack(outputs)


def test_matches_the_reference_formula() -> None:
    torch.manual_seed(0)
    projector = CrossAttentionProjector(
        text_dim=6, feature_channels=[3, 5], feature_strides=[4, 8], out_dim=7, dim=DIM, heads=HEADS, dim_head=DIM_HEAD
    ).double()
    with torch.no_grad():
        for norm in (m for m in projector.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.normal_(1.0, 0.3)  # non-trivial affines, so that a swapped norm shows
            norm.bias.normal_(0.0, 0.3)
    pooled = torch.randn(2, 6, dtype=torch.double)
    features = [torch.randn(2, 3, 6, 6, dtype=torch.double), torch.randn(2, 5, 3, 3, dtype=torch.double)]
    llm = LLMOutput(pooled=pooled, tokens=pooled[:, None], token_mask=torch.ones(2, 1, dtype=torch.bool))
    with torch.no_grad():
        queries = projector(llm, features)
        expected = direct(projector, pooled, features[-1])
    assert queries.shape == (2, 1, 7)
    torch.testing.assert_close(queries[:, 0], expected, rtol=1e-10, atol=1e-10)


def test_level_outside_the_encoder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="level 2 is not an encoder level"):
        CrossAttentionProjector(text_dim=6, feature_channels=[3, 5], feature_strides=[4, 8], out_dim=7, level=2)
