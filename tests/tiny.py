"""Tiny experiment configs built in code (HF-tests style): real components, small enough for CPU tests."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

TINY_LLM = {
    "name": "hf_causal_lm",
    "config": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 300,
        "max_position_embeddings": 512,
    },
    "tokenizer": "byte",
    "template": "Question: <question>[SEG] Answer:",
    "answer_template": None,
    "pooling": "mean",
}

TINY = {
    "name": "tiny",
    "seed": 0,
    "model": {
        "encoder": {"name": "efficientnet_lite", "variant": 0, "pretrained": False},
        "compressor": None,
        "llm": TINY_LLM,
        "projector": {"name": "mlp"},
        "mask_head": {"name": "fpn", "dim": 16, "query_dim": 32},
    },
    "data": {"format": "earthreason", "image_size": 64, "batch_size": 2, "eval_batch_size": 4},
    "loss": {"point_sample": False},
    "optim": {"lr": 1e-3},
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 3,
        "accelerator": "cpu",
        "devices": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "limit_val_batches": 2,
    },
}


def tiny_config(**overrides) -> dict:
    """A deep copy of TINY with top-level sections updated (one level deep)."""
    cfg = copy.deepcopy(TINY)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# The faithful data path at test size: visual tokens into the LLM's prompt, a Mask2Former head (its pixel decoder
# and transformer decoder are submodules that forward hooks can count).
TINY_IMAGE_PATH = {
    "compressor": {"name": "conv_stride", "ratio": 4},
    "llm": dict(TINY_LLM, template="<image> Question: <question>[SEG] Answer:"),
    "mask_head": {"name": "mask2former", "hidden_dim": 32, "mask_dim": 32, "enc_layers": 1, "dec_layers": 1,
                  "dim_feedforward": 64, "enc_dim_feedforward": 64, "heads": 4},
}


def count_rows(model) -> dict[str, list[int]]:
    """Forward hooks on each part of a model with ``TINY_IMAGE_PATH``: per part, the batch rows of every call (the
    LLM and the projector count questions, the other parts images or, for the transformer decoder, queries' rows)."""
    rows: dict[str, list[int]] = {}

    def hook(name):
        def record(module, args, kwargs, out):
            if name == "transformer decoder":  # transformers' decoder: content queries [Q,B,C] by keyword
                n = kwargs["inputs_embeds"].shape[1]
            elif name == "llm":
                n = len(args[0])
            elif name == "projector":
                n = args[0].pooled.shape[0]
            else:
                first = args[0]
                n = (first[0] if isinstance(first, (list, tuple)) else first).shape[0]
            rows.setdefault(name, []).append(n)

        return record

    parts = {"encoder": model.encoder, "compressor": model.compressor, "pixel decoder": model.mask_head.pixel_decoder,
             "llm": model.llm, "projector": model.projector, "transformer decoder": model.mask_head.decoder}
    for name, module in parts.items():
        module.register_forward_hook(hook(name), with_kwargs=True)
    return rows
