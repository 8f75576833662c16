"""Mask2Former mask head queried by the projector's output, from transformers' parts.

transformers' ``Mask2FormerPixelDecoder`` (multi-scale deformable attention encoder over the three coarsest maps
+ FPN lateral at the finest) and ``Mask2FormerMaskedAttentionDecoder`` (masked cross-attention round-robin over
the three levels, self-attention, FFN; post-norm; mask predictor = decoder norm -> 3-layer MLP -> einsum with the
mask features) are used as they are. What this module adds is what ``Mask2FormerTransformerModule`` does around
the decoder, minus its learned queries: the decoder's content queries are our ``queries`` and the query
position embedding is zero, there is no class head (the reference's "SEG query" decoder).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoder,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderOutput,
    Mask2FormerPreTrainedModel,
    Mask2FormerSinePositionEmbedding,
)

from components._checkpoint import load_into, read_state_dict
from framework.core.contracts import MaskHead, MaskHeadOutput
from framework.core.errors import ConfigError
from framework.core.registry import MASK_HEADS

WHERE = "mask_head.weights (mask2former)"
NUM_LEVELS = 3  # fixed in transformers' pixel decoder: deformable attention over the 3 coarsest maps

# HF Mask2Former checkpoint key prefix -> this module's; prefixes of parts replaced or not used here are dropped.
_HF_PREFIXES = (
    (r"^(model\.)?pixel_level_module\.decoder\.", "pixel_decoder."),
    (r"^(model\.)?transformer_module\.decoder\.", "decoder."),
    (r"^(model\.)?transformer_module\.level_embed\.", "level_embed."),
)
_HF_DROPPED = re.compile(
    r"^(model\.)?(pixel_level_module\.encoder\.|transformer_module\.queries_(embedder|features)\.)"
    r"|^class_predictor\.|^criterion\."
)


class _Initialiser(Mask2FormerPreTrainedModel):
    """Holds the transformers parts only long enough to apply transformers' Mask2Former weight init to them.

    ``_init_weights`` is called on every module, children before parents (so that e.g. the deformable attention's
    own init of its sampling offsets wins over the generic Linear init). ``post_init`` is not used: for a class
    defined outside transformers it skips modules without parameters of their own, the deformable attention
    among them.
    """

    def __init__(self, config: Mask2FormerConfig, in_channels: list[int]) -> None:
        super().__init__(config)
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=in_channels)
        self.level_embed = nn.Embedding(NUM_LEVELS, config.hidden_dim)
        self.decoder = Mask2FormerMaskedAttentionDecoder(config)
        with torch.no_grad():
            for module in reversed(list(self.modules())):
                self._init_weights(module)


@MASK_HEADS.register("mask2former")
class Mask2FormerHead(MaskHead):
    """features [B,C_i,H/s_i,W/s_i] (s_0 = output stride) + queries [B,Q,hidden_dim] -> mask logits.

    ``hidden_dim``: pixel-decoder and transformer-decoder width (the reference's conv_dim = hidden_dim = 256);
    ``mask_dim``: mask feature width; ``enc_layers``: deformable encoder layers (FFN ``enc_dim_feedforward``);
    ``dec_layers``: masked-attention decoder layers (FFN ``dim_feedforward``); ``heads``: attention heads of both.
    ``weights``: a transformers Mask2Former state dict (file or directory), or the combined file that
    ``segearth convert mask2former`` writes from a detectron2 checkpoint (this head's keys under ``mask_head.``);
    its pixel decoder, transformer decoder and mask predictor are loaded, its backbone, learned queries and class
    head are not used.
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        hidden_dim: int = 256,
        mask_dim: int = 256,
        enc_layers: int = 6,
        dec_layers: int = 9,
        dim_feedforward: int = 2048,
        enc_dim_feedforward: int = 1024,
        heads: int = 8,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        _check_config(in_channels, strides, hidden_dim, heads, enc_layers, dec_layers)
        config = Mask2FormerConfig(
            feature_size=hidden_dim,
            hidden_dim=hidden_dim,
            mask_feature_size=mask_dim,
            encoder_layers=enc_layers,
            decoder_layers=dec_layers + 1,  # transformers counts the prediction before the first layer as one
            dim_feedforward=dim_feedforward,
            encoder_feedforward_dim=enc_dim_feedforward,
            num_attention_heads=heads,
            feature_strides=list(strides),
            common_stride=strides[0],
            dropout=0.0,  # transformers also uses it as the decoder's layer-drop rate
        )
        parts = _Initialiser(config, list(in_channels))
        self.pixel_decoder = parts.pixel_decoder
        self.level_embed = parts.level_embed
        self.decoder = parts.decoder
        self.position_embedder = Mask2FormerSinePositionEmbedding(num_position_features=hidden_dim // 2, normalize=True)
        self.query_dim = hidden_dim
        self.output_stride = strides[0]
        if weights is not None:
            load_into(self, _own_layout(read_state_dict(weights, WHERE, prefix="mask_head.")), WHERE, weights)

    @classmethod
    def example_config(cls) -> dict:
        return {
            "hidden_dim": 32,
            "mask_dim": 32,
            "enc_layers": 1,
            "dec_layers": 2,
            "dim_feedforward": 64,
            "enc_dim_feedforward": 64,
            "heads": 4,
        }

    def pixel_features(self, features: list[torch.Tensor]) -> Mask2FormerPixelDecoderOutput:
        """The pixel decoder over the encoder's maps (finest first; question-independent): ``multi_scale_features``
        (coarsest first, [B,hidden_dim,h,w]) and ``mask_features`` [B,mask_dim,H/s_0,W/s_0]."""
        return self.pixel_decoder(list(features))

    def decode(self, pixels: Mask2FormerPixelDecoderOutput, queries: torch.Tensor) -> MaskHeadOutput:
        """The masked-attention transformer decoder over ``pixel_features``' output, queried by ``queries``
        [B,Q,hidden_dim]: masks [B,Q,H/s_0,W/s_0] after the last decoder layer; aux: the prediction before the first
        layer and after each earlier one (dec_layers in all)."""
        levels = pixels.multi_scale_features  # coarsest first: the decoder's round-robin starts at stride 32
        keys, key_positions = [], []  # each [h*w,B,C]
        for i, level in enumerate(levels):
            position = self.position_embedder(level.shape, level.device, level.dtype)
            key_positions.append(position.flatten(2).permute(2, 0, 1))
            keys.append((level.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
        content = queries.transpose(0, 1)  # [Q,B,C]
        decoded = self.decoder(
            inputs_embeds=content,
            multi_stage_positional_embeddings=key_positions,
            pixel_embeddings=pixels.mask_features,
            encoder_hidden_states=keys,
            query_position_embeddings=torch.zeros_like(content),  # the reference's: no query position
            feature_size_list=[level.shape[-2:] for level in levels],
            return_dict=True,
        )
        predictions = list(decoded.masks_queries_logits)
        return MaskHeadOutput(masks=predictions[-1], aux=predictions[:-1])


def _check_config(
    in_channels: list[int], strides: list[int], hidden_dim: int, heads: int, enc_layers: int, dec_layers: int
) -> None:
    if len(in_channels) != len(strides) or len(strides) < NUM_LEVELS:
        raise ConfigError(
            f"mask_head (mask2former): needs at least {NUM_LEVELS} encoder levels with one stride each, "
            f"got channels {list(in_channels)} and strides {list(strides)}"
        )
    # transformers' pixel decoder adds FPN levels from stride strides[-3] down to strides[0]: one per encoder map
    # finer than the deformable levels, so the strides below them must halve level by level
    if int(math.log2(strides[-NUM_LEVELS]) - math.log2(strides[0])) != len(strides) - NUM_LEVELS:
        raise ConfigError(
            f"mask_head (mask2former): encoder strides {list(strides)} do not halve from each map to the next "
            f"finer one below stride {strides[-NUM_LEVELS]}"
        )
    if hidden_dim % 32 or hidden_dim % heads:
        raise ConfigError(
            f"mask_head.hidden_dim: {hidden_dim} must be a multiple of 32 (GroupNorm groups) and of heads ({heads})"
        )
    if enc_layers < 0 or dec_layers < 0:
        raise ConfigError(f"mask_head: enc_layers and dec_layers must be >= 0, got {enc_layers}, {dec_layers}")


def _own_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers Mask2Former state dict renamed to this module's keys (keys already in it pass through)."""
    out = {}
    for key, tensor in state_dict.items():
        if _HF_DROPPED.match(key):
            continue
        for pattern, replacement in _HF_PREFIXES:
            key = re.sub(pattern, replacement, key)
        out[key] = tensor
    return out
