"""The interface of every slot. Shapes are the contract; components know nothing else of each other.

Build order and what the framework injects into each constructor (a config never sets these):

=========== =============================================================== ==============================
slot        injected constructor arguments                                  forward
=========== =============================================================== ==============================
encoder     (none)                                                          images [B,3,H,W] in [0,1]
                                                                            -> list of [B,C_i,H/s_i,W/s_i]
llm         (none)                                                          see ``LanguageModel``
compressor  in_channels: int (encoder level chosen by ``level``),            [B,C,h,w] -> [B,N,D_llm]
            out_dim: int (= llm.hidden_size)
mask_head   in_channels: list[int], strides: list[int] (the encoder's)       see ``MaskHead``
projector   text_dim: int (= llm.hidden_size), feature_channels: list[int],  see ``Projector``
            feature_strides: list[int], out_dim: int (= mask_head.query_dim)
=========== =============================================================== ==============================

Every slot config may also carry the options the framework handles itself (``SlotSpec.options``): ``frozen: bool``
(the framework turns gradients off and keeps the module in eval mode, so dropout/DropPath never run on a frozen
part), ``grad_checkpointing: bool`` (the component's ``set_grad_checkpointing``), ``dtype`` on the encoder (frozen
only: weights stored in bfloat16/float16) and ``level: int`` on the compressor (which encoder feature map it
compresses). The whole compressor slot may be ``null``: then no visual tokens reach the LLM, and its prompt must not
contain ``<image>``.

The slots themselves (names, injected arguments, framework options) are the one table in ``framework.core.slots``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class Encoder(nn.Module):
    """Hierarchical visual encoder.

    Attributes set by ``__init__``: ``channels`` (C_i per output level) and ``strides`` (s_i, increasing,
    the first one 4 so that mask heads can predict at H/4). Input images are RGB in [0, 1]; the encoder
    applies its own normalisation (ImageNet statistics, or whatever its weights were trained with).
    ``forward(images [B,3,H,W]) -> list[Tensor [B,C_i,H/s_i,W/s_i]]`` for any H, W divisible by
    ``max(strides)``.
    """

    channels: list[int]
    strides: list[int]


class Compressor(nn.Module):
    """Turns one feature map into visual tokens for the LLM.

    ``forward(feature [B,C,h,w]) -> tokens [B,N,out_dim]`` with ``N == self.num_tokens(h, w)``, at any h, w
    the compressor's strides allow (no feature-map size baked into the module).
    """

    def num_tokens(self, h: int, w: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class LLMOutput:
    """What the LLM slot returns.

    - ``pooled`` [B,D]: the description embedding (how it is pooled is the LLM's ``pooling`` option).
    - ``tokens`` [B,L,D]: final hidden states of the description span (question tokens + ``[SEG]``),
      right-padded; ``token_mask`` [B,L] (bool) marks real positions.
    - ``lm_loss``: scalar LM cross-entropy on the answer text, or None when no answer was supervised.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    lm_loss: torch.Tensor | None = None


class LanguageModel(nn.Module):
    """Wraps a tokenizer + causal LM.

    Attributes ``hidden_size`` (D) and ``uses_image`` (whether the prompt takes visual tokens; the framework
    checks it against the compressor slot). ``forward(questions: list[str], visual_tokens: Tensor [U,N,D] | None,
    answers: list[str] | None, image_index: Tensor [B] | None) -> LLMOutput``: question i reads the visual tokens
    of image ``image_index[i]`` (None: U == B and question i reads row i). Visual tokens replace the prompt's
    ``<image>`` placeholder. An LLM may use ``image_index`` to run what the questions of one image share once.
    """

    hidden_size: int
    uses_image: bool


class Projector(nn.Module):
    """Description projection: fuses the description embedding with encoder features into mask queries.

    ``forward(llm: LLMOutput, features: list[Tensor [B,C_i,h_i,w_i]]) -> queries [B,Q,out_dim]`` (Q=1 in
    the paper).
    """


@dataclass
class MaskHeadOutput:
    """``masks`` [B,Q,H/s,W/s] logits at the head's ``output_stride`` s; ``aux``: earlier predictions of the
    same shape for deep supervision (may be empty)."""

    masks: torch.Tensor
    aux: list[torch.Tensor] = field(default_factory=list)


class MaskHead(nn.Module):
    """Mask generator queried by the projector's output, in two steps so that the question-independent one runs once
    per image however many questions are asked of it.

    Attributes ``query_dim`` (D_mask) and ``output_stride`` (4 by default).
    ``pixel_features(features: list[Tensor [B,C_i,H/s_i,W/s_i]])``: whatever of the head reads only the image (a
    pixel decoder), in any nesting of tensors with the batch first; the default is the features themselves.
    ``decode(pixels, queries [B,Q,query_dim]) -> MaskHeadOutput``: the question-dependent rest.
    ``forward(features, queries)`` is both.
    """

    query_dim: int
    output_stride: int

    def pixel_features(self, features: list[torch.Tensor]) -> Any:
        return features

    def decode(self, pixels: Any, queries: torch.Tensor) -> MaskHeadOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, features: list[torch.Tensor], queries: torch.Tensor) -> MaskHeadOutput:
        return self.decode(self.pixel_features(features), queries)
