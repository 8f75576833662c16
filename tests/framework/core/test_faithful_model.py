"""The paper-faithful model at full size (experiments/segearth_r1/earthreason.yaml: Swin-B/12, conv_stride, Phi-1.5
architecture with random weights, cross_attention, Mask2Former, 1024² input): what it holds, what trains, and one
training step plus one prediction on the CPU.

Heavy (1.4 B parameters; minutes on one CPU thread and most of a 24 GiB machine): run it on its own,
``pytest -m slow tests/framework/core/test_faithful_model.py``.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from pathlib import Path

import lightning as L
import psutil
import pytest
import torch

from framework.core.config import load_config
from framework.core.model import upsample_logits
from framework.data.transforms import letterbox_geometry
from framework.eval.postprocess import unletterbox
from framework.train.task import SegEarthTask

pytestmark = pytest.mark.slow

EXPERIMENT = Path(__file__).resolve().parents[3] / "experiments" / "segearth_r1" / "earthreason.yaml"
SIZE = 1024

# Parameters per slot, computed once (2026-12) as sum(p.numel() for p in slot.parameters()) over
# SegEarthModel(load_config(EXPERIMENT)["model"]).slots(), and checked by hand against the architecture:
# - encoder: Swin-B without its classifier, + norm0..norm3 (also in tests/components/encoders/test_swin.py);
# - compressor: 3x3 s2 conv 1024->2048, 3x3 s2 conv 2048->2048, 1x1 conv 2048->2048 (+ biases), two
#   GroupNorm(1, 2048) affines (the reference's LayerNorm([2048,16,16]) / ([2048,8,8]) hold 1,310,720);
# - llm: Phi-1.5's 24 layers + final norm = 1,208,504,320, plus the input embedding and the LM head (with bias) over
#   the reference's 50,297 rows (Phi's 50,295 tokens + [PAD] + [SEG]; `embedding_rows`, whatever stand-in tokenizer)
#   = 206,016,512 + 50,297 bias (the reference drops the LM head bias: 50,297 fewer);
# - projector: the reference's origin/local/text projectors, D-Projector and SEG projector, exactly;
# - mask_head: pixel decoder + 9-layer masked-attention decoder (also in tests/components/mask_heads/).
PARAMETERS = {
    "encoder": 86_880_376,
    "compressor": 60_831_744,
    "llm": 1_414_571_129,
    "projector": 4_462_336,
    "mask_head": 19_951_808,
}
TRAINABLE = {"encoder": False, "compressor": True, "llm": True, "projector": True, "mask_head": True}
# The byte tokenizer spends a token per character: the prompt's fixed text alone is ~320 tokens (a BPE tokenizer
# such as Phi's needs a fraction of that), so short texts keep the sequence at 443 tokens with the answer.
QUESTION = "Where can a seaplane land?"
ANSWER = "On the calm bay."


@pytest.fixture(scope="module")
def task() -> SegEarthTask:
    L.seed_everything(0, verbose=False)
    return SegEarthTask(load_config(EXPERIMENT))


def test_parameters_per_slot_and_what_trains(task: SegEarthTask) -> None:
    slots = task.model.slots()
    assert {slot: sum(p.numel() for p in module.parameters()) for slot, module in slots.items()} == PARAMETERS
    for slot, module in slots.items():
        assert {p.requires_grad for p in module.parameters()} == {TRAINABLE[slot]}, slot
    task.train()
    assert not any(m.training for m in task.model.encoder.modules())  # frozen: no DropPath, even in training
    assert all(m.training for slot in ("compressor", "llm", "projector", "mask_head") for m in slots[slot].modules())
    assert task.model.llm.causal_lm.is_activation_checkpointing
    assert task.model.compressor.num_tokens(SIZE // 32, SIZE // 32) == 64


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every 50 ms (the process's
    lifetime maximum would also count whatever tests ran before in the same session). On glibc, heap memory that
    earlier tests freed is handed back to the system first, so that it is not counted either."""

    def __enter__(self) -> PeakRSS:
        if sys.platform == "linux":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.process, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def test_one_training_step_and_one_prediction_at_1024(task: SegEarthTask) -> None:
    with PeakRSS() as rss:
        seconds = step_and_predict(task)
    peak_gb = rss.peak / 2**30
    print(f"\nfaithful model at {SIZE}²: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f", peak RSS {peak_gb:.1f} GiB")
    assert peak_gb < 18.5, "the training step should stay well inside a 24 GiB machine"


def step_and_predict(task: SegEarthTask) -> dict[str, float]:
    model = task.model
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, SIZE, SIZE, generator=generator)
    target = torch.zeros(1, SIZE, SIZE, dtype=torch.uint8)
    target[:, 300:700, 200:600] = 1
    seconds = {}
    started = time.perf_counter()

    task.train()
    # the image pass: the frozen encoder without autograd, in eval mode (its maps serve the step and the prediction);
    # the compressor and pixel decoder with autograd
    features = model.encode(images)
    seen = model.see_encoded(features)
    assert [tuple(f.shape) for f in seen.features] == [
        (1, 128, 256, 256), (1, 256, 128, 128), (1, 512, 64, 64), (1, 1024, 32, 32)
    ]
    assert tuple(seen.visual_tokens.shape) == (1, 64, 2048)  # the 64 visual tokens
    seconds["image pass"] = time.perf_counter() - started

    started = time.perf_counter()
    out = model.answer(seen, [QUESTION], answers=[ANSWER])
    terms = task._loss(out, target, point_sampled=task.config["loss"]["point_sample"])
    assert len(out.aux_logits) == 9 and out.lm_loss is not None
    assert all(torch.isfinite(t) for t in terms.values())
    terms["loss"].backward()
    seconds["training step"] = time.perf_counter() - started
    for slot, module in model.slots().items():
        for name, param in module.named_parameters():
            if TRAINABLE[slot]:
                assert param.grad is not None and torch.isfinite(param.grad).all(), f"{slot}.{name}"
            else:
                assert param.grad is None, f"{slot}.{name}"
    probe = model.mask_head.decoder.layernorm.weight
    before = probe.detach().clone()
    # plain SGD: no optimiser state, so the step fits next to 1.3 B fp32 parameters and their gradients
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert not torch.equal(probe.detach(), before)
    model.zero_grad(set_to_none=True)

    started = time.perf_counter()
    task.eval()
    with torch.no_grad():
        prediction = model.answer(model.see_encoded(features), [QUESTION])
    seconds["prediction"] = time.perf_counter() - started
    assert tuple(prediction.mask_logits.shape) == (1, SIZE // 4, SIZE // 4) and prediction.output_stride == 4
    assert torch.isfinite(prediction.mask_logits).all()
    assert tuple(upsample_logits(prediction.mask_logits, (SIZE, SIZE)).shape) == (1, SIZE, SIZE)
    box = letterbox_geometry(1500, 1000, SIZE)  # where a portrait 1500x1000 photo sits in the frame
    (mask,) = unletterbox(prediction.mask_logits, [box], [(1500, 1000)], frame_size=SIZE)
    assert mask.shape == (1500, 1000) and mask.dtype == torch.bool
    return seconds
