"""Section 5: one optimiser step (forward, losses with deep supervision, backward, AdamW) of the tiny test config
(tests/tiny.py) and the CPU demo (experiments/demo.yaml): samples/s and peak RSS as image size and batch grow."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Section, peak_rss_mib, reset_peak_rss, rss_mib, seconds
from benchmarks.models import DEMO, QUESTION
from framework.core.config import load_config
from framework.train.task import SegEarthTask
from tests.tiny import tiny_config, write_config


def configs() -> dict[str, dict[str, Any]]:
    """Resolved configs by name: ``tiny`` (the test suite's) and ``demo``."""
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_config(write_config(Path(tmp) / "tiny.yaml", tiny_config()))
    return {"tiny": tiny, "demo": load_config(DEMO)}


def step_cost(task: SegEarthTask, size: int, batch: int, repeat: int) -> dict[str, float]:
    """Best seconds per step (after one warm-up step), samples/s, peak RSS and its rise during the steps."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator)
    masks = torch.zeros(batch, size, size, dtype=torch.uint8)
    masks[:, size // 4 : size // 2, size // 3 : 3 * size // 4] = 1
    questions = [QUESTION] * batch
    answers = ["The calm bay."] * batch
    loss_cfg = task.config["loss"]
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    task.train()

    def step() -> None:
        out = task.model(images, questions, answers=answers if loss_cfg["lm_weight"] > 0 else None)
        task._loss(out, masks, point_sampled=loss_cfg["point_sample"])["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    before = rss_mib()
    reset_peak_rss()
    elapsed = seconds(step, repeat=repeat, warmup=1)
    peak = peak_rss_mib()
    return {"seconds": elapsed, "samples_per_s": batch / elapsed, "peak_rss_mib": peak, "step_rss_mib": peak - before}


def run(quick: bool) -> Section:
    if quick:
        grid = {"tiny": [(128, 1), (256, 1)], "demo": [(256, 2)]}
    else:  # tiny and demo share the encoder (EfficientNet-Lite0), so the batch sweep runs on the demo only
        grid = {"tiny": [(256, 1), (512, 1), (1024, 1), (256, 4)],
                "demo": [(256, 1), (512, 1), (1024, 1), (256, 2), (256, 4), (256, 8)]}
    section = Section(
        key="training",
        title="Training step (forward + loss + backward + AdamW)" + (" (--quick: fewer sizes)" if quick else ""),
        columns=["config", "image", "batch", "s/step", "samples/s", "peak RSS MiB", "rise during step MiB"],
    )
    results = {}
    for name, config in configs().items():
        torch.manual_seed(0)
        task = SegEarthTask(config)
        for size, batch in grid[name]:
            cost = step_cost(task, size, batch, repeat=1)
            results[f"{name} {size} x{batch}"] = cost
            section.rows.append([name, f"{size}²", batch, round(cost["seconds"], 3), round(cost["samples_per_s"], 2),
                                 round(cost["peak_rss_mib"]), round(cost["step_rss_mib"])])
        del task
    section.data = results
    section.notes += [
        "s/step: one timed step after one warm-up step. Synthetic batches (random pixels, one rectangle per mask, "
        "the same question). The demo's frozen LLM serves repeated questions from its question cache, as in demo "
        "training, where questions are templated.",
        "peak RSS: the process's peak resident memory during the steps (model, optimiser state and activations; "
        "the kernel's high-water mark, reset before each row); rise: that peak minus the RSS before the steps.",
    ]
    return section
