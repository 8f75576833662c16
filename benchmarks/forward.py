"""Section 2: the full-size forward (Swin-B + Phi-1.5 architecture, 1024², batch 1), per stage: FLOPs counted by
``torch.utils.flop_counter``, wall time, and achieved GFLOP/s as a share of the measured fp32 matmul ceiling."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Section, Target, timed
from benchmarks.models import QUESTION, staged_forward

# Why a stage runs below 10 % of the matmul ceiling (checked against the torch profiler, docs/results/performance.md).
BOUNDS = {
    "encoder": "window attention on 144-token windows: many small matmuls, plus LayerNorm/GELU/roll/pad copies",
    "compressor": "two strided 3x3 convs on a 32² map: a few large GEMMs; little else",
    "llm prefill": "GEMMs with only as many rows as the prompt has tokens (~150), plus GELU/LayerNorm/rotary passes",
    "projector": "a handful of small GEMMs (one query, 1024 keys): call overhead and weight reads dominate",
    "pixel decoder": "over half its time is uncounted, memory-bound work: grid_sample (~16 %) and the stack, "
                     "weighting and sum of the samples plus position codes (cat/copy/mul/add, ~35 %)",
    "transformer decoder": "one query: every matmul is a matrix-vector product over the keys (memory-bound on "
                           "reading the keys and weights), plus mask interpolation per layer",
    "post-processing": "no matmuls at all: bilinear resampling and thresholding of 1024² maps (memory-bound)",
}

QUICK_BOUND = "reduced model (widths 32-256): every op is too small to keep the matmul units busy"


def measure_stages(model, images: torch.Tensor, questions: list[str], timed_passes: int) -> dict[str, dict]:
    """{stage: {"flops", "seconds"}}: one pass under the FLOP counter (it also warms up), then the best of
    ``timed_passes`` timed passes per stage."""
    flops: dict[str, int] = {}
    times: dict[str, float] = defaultdict(lambda: float("inf"))

    def count(stage: str, fn) -> Any:
        with FlopCounterMode(display=False) as counter:
            out = fn()
        flops[stage] = counter.get_total_flops()
        return out

    def clock(stage: str, fn) -> Any:
        out, elapsed = timed(fn)
        times[stage] = min(times[stage], elapsed)
        return out

    with torch.inference_mode():
        staged_forward(model, images, questions, count)
        for _ in range(timed_passes):
            staged_forward(model, images, questions, clock)
    return {stage: {"flops": flops[stage], "seconds": times[stage]} for stage in flops}


def run(model, size: int, ceiling_gflops: float, quick: bool) -> Section:
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    stages = measure_stages(model, images, [QUESTION], timed_passes=2 if quick else 1)
    total_flops = sum(s["flops"] for s in stages.values())
    total_seconds = sum(s["seconds"] for s in stages.values())
    section = Section(
        key="forward",
        title=f"Forward at {size}², batch 1, per stage" + (" (--quick: reduced model)" if quick else ""),
        columns=["stage", "GFLOP", "seconds", "share of time", "GFLOP/s", "% of fp32 ceiling", "bound by"],
    )
    for stage, s in [*stages.items(), ("whole forward", {"flops": total_flops, "seconds": total_seconds})]:
        rate = s["flops"] / s["seconds"] / 1e9
        fraction = rate / ceiling_gflops
        why = "" if fraction >= 0.10 or stage == "whole forward" else QUICK_BOUND if quick else BOUNDS[stage]
        section.rows.append([stage, round(s["flops"] / 1e9, 1), round(s["seconds"], 3),
                             f"{s['seconds'] / total_seconds:.0%}", round(rate, 1), round(100 * fraction, 1), why])
        s["gflops_per_s"], s["fraction_of_ceiling"] = rate, fraction
    section.data = {"stages": stages, "total_flops": total_flops, "total_seconds": total_seconds,
                    "ceiling_gflops": ceiling_gflops, "size": size}
    section.targets.append(Target("whole forward, share of the fp32 matmul ceiling", total_flops / total_seconds
                                  / 1e9 / ceiling_gflops, 0.35, ">="))
    section.notes.append("FLOPs: torch.utils.flop_counter (matmuls, convolutions, attention; grid_sample, "
                         "normalisations and element-wise ops count zero). Time: a timed pass (--quick: best of two), "
                         "torch.inference_mode, after one warm-up pass (the counted one).")
    return section
