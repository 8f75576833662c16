"""Section 6: several questions about one image. The image pass (``SegEarthModel.see``: encoder, compressor, the
head's pixel features) runs once and serves every question (``SegEarthModel.answer`` with every question's
``image_index`` 0). Cost = that image pass + the answers + the post-processing of every mask."""

from __future__ import annotations

import time

import torch

from benchmarks.common import Section, Target, timed
from benchmarks.models import postprocess

COUNTS = (1, 4, 16)
PLACES = ["harbour", "airport", "stadium", "park", "parking lot", "river bank", "construction site", "farm field",
          "roundabout", "beach", "school", "bridge", "rail yard", "solar farm", "golf course", "marina"]


def questions(n: int, trial: int) -> list[str]:
    """``n`` distinct questions, different for every ``trial`` (no answer cached from an earlier trial)."""
    return [f"Where in this {PLACES[i]} could a helicopter land, survey {trial}?" for i in range(n)]


def cost(model, image: torch.Tensor, asked: list[str]) -> tuple[float, float]:
    """(seconds to answer every question in ``asked`` about ``image`` [1,3,S,S], of which in the LLM)."""
    size = image.shape[-1]
    llm_seconds = []
    started = model.llm.register_forward_pre_hook(lambda *_: llm_seconds.append(-time.perf_counter()))
    finished = model.llm.register_forward_hook(lambda *_: llm_seconds.append(time.perf_counter()))

    def answer() -> None:
        out = model.answer(model.see(image), asked, torch.zeros(len(asked), dtype=torch.long))
        postprocess(out.mask_logits, size, (size, size))

    try:
        with torch.inference_mode():
            total = timed(answer)[1]
    finally:
        started.remove()
        finished.remove()
    return total, sum(llm_seconds)


def run(models: dict[str, tuple[object, int]], quick: bool) -> Section:
    """``models``: name -> (model, image size)."""
    section = Section(
        key="questions",
        title="Several questions about one image (encoder once)" + (" (--quick: reduced model)" if quick else ""),
        columns=["model", "image", "questions", "seconds", "of which LLM", "seconds/question", "cost vs 1 question"],
    )
    results: dict[str, dict[str, float]] = {}
    trial = 0
    for name, (model, size) in models.items():
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        cost(model, image, questions(1, trial))  # warm-up
        results[name] = {}
        for n in COUNTS:
            trial += 1
            results[name][str(n)], results[name][f"{n} llm"] = cost(model, image, questions(n, trial))
        rows = [(str(n), n) for n in COUNTS]
        if getattr(model.llm, "_cache_size", 0) and model.compressor is None and not any(
            p.requires_grad for p in model.llm.parameters()
        ):  # a frozen text-only LLM caches each question's output: the same 16 questions asked again
            results[name]["16 asked before"], results[name]["16 asked before llm"] = cost(
                model, image, questions(16, trial)
            )
            rows.append(("16 asked before", 16))
        one = results[name]["1"]
        for label, n in rows:
            elapsed, llm = results[name][label], results[name][f"{label} llm"]
            section.rows.append([name, f"{size}²", label, round(elapsed, 3), round(llm, 3), round(elapsed / n, 3),
                                 f"{elapsed / one:.1f}x"])
        ratio = results[name]["16"] / one
        section.targets.append(Target(f"{name}: 16 questions / 1 question", ratio, 6.0, "<"))
        llm_share = results[name]["16 llm"] / results[name]["16"]
        if ratio >= 6.0 and llm_share > 0.5:
            image_side = results[name]["16"] - results[name]["16 llm"]
            section.notes.append(
                f"{name}: bound by the LLM. Every new question is its own prompt through the LLM "
                f"({results[name]['16 llm']:.3f} s of the {results[name]['16']:.3f} s for 16, "
                f"{llm_share:.0%}); the image side (encoder once, then the head for 16 questions) takes "
                f"{image_side:.3f} s, {image_side / one:.1f}x one question's whole cost."
            )
    section.data = results
    return section
