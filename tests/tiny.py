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
