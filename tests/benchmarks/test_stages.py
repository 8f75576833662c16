"""The benchmark's stage-by-stage forward computes exactly what the model's own forward computes."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.models import staged_forward
from framework.core.model import SegEarthModel
from tests.tiny import TINY

WITH_MASK2FORMER = {
    "encoder": {"name": "swin", "variant": "nano"},
    "compressor": {"name": "conv_stride", "ratio": 4},
    "llm": {**TINY["model"]["llm"], "template": "<image> Question: <question>[SEG] Answer:"},
    "projector": {"name": "cross_attention", "dim": 32, "heads": 2, "dim_head": 16},
    "mask_head": {"name": "mask2former", "hidden_dim": 32, "mask_dim": 32, "enc_layers": 1, "dec_layers": 2,
                  "dim_feedforward": 64, "enc_dim_feedforward": 64, "heads": 4},
}


@pytest.mark.parametrize("model_cfg", [TINY["model"], WITH_MASK2FORMER], ids=["fpn", "mask2former"])
def test_stages_reproduce_the_forward(model_cfg: dict) -> None:
    torch.manual_seed(0)
    model = SegEarthModel(copy.deepcopy(model_cfg)).eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    questions = ["where is the water?", "which roads lead north?"]
    seen: list[str] = []

    def measure(stage: str, fn):
        seen.append(stage)
        return fn()

    with torch.no_grad():
        staged = staged_forward(model, images, questions, measure)
        expected = model(images, questions).mask_logits
    torch.testing.assert_close(staged, expected)
    mask2former = model_cfg["mask_head"]["name"] == "mask2former"
    head = ["pixel decoder", "transformer decoder"] if mask2former else ["mask head: image part", "mask head: question part"]
    assert seen == ["encoder", *(["compressor"] if model.compressor else []), "llm prefill", "projector", *head,
                    "post-processing"]
