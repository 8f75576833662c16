"""Section 6: several questions about one image. The encoder runs once (``SegEarthModel.encode``); its features,
expanded over the batch, serve every question (``forward(None, questions, features=...)``), so the compressor and
the pixel decoder also run once per image (``components._broadcast``). Cost = encoder + that forward + the
post-processing of every mask."""

from __future__ import annotations

import torch

from benchmarks.common import Section, Target, timed
from benchmarks.models import postprocess

COUNTS = (1, 4, 16)
PLACES = ["harbour", "airport", "stadium", "park", "parking lot", "river bank", "construction site", "farm field",
          "roundabout", "beach", "school", "bridge", "rail yard", "solar farm", "golf course", "marina"]


def questions(n: int, trial: int) -> list[str]:
    """``n`` distinct questions, different for every ``trial`` (no answer cached from an earlier trial)."""
    return [f"Where in this {PLACES[i]} could a helicopter land, survey {trial}?" for i in range(n)]


def cost(model, image: torch.Tensor, asked: list[str]) -> float:
    """Seconds to answer every question in ``asked`` about ``image`` [1,3,S,S]."""
    size = image.shape[-1]

    def answer() -> None:
        features = model.encode(image)
        shared = [f.expand(len(asked), *f.shape[1:]) for f in features]
        out = model(None, asked, features=shared)
        postprocess(out.mask_logits, size, (size, size))

    with torch.inference_mode():
        return timed(answer)[1]


def run(models: dict[str, tuple[object, int]], quick: bool) -> Section:
    """``models``: name -> (model, image size)."""
    section = Section(
        key="questions",
        title="Several questions about one image (encoder once)" + (" (--quick: reduced model)" if quick else ""),
        columns=["model", "image", "questions", "seconds", "seconds/question", "cost vs 1 question"],
    )
    results: dict[str, dict[str, float]] = {}
    trial = 0
    for name, (model, size) in models.items():
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        cost(model, image, questions(1, trial))  # warm-up
        results[name] = {}
        for n in COUNTS:
            trial += 1
            results[name][str(n)] = cost(model, image, questions(n, trial))
        rows = [(str(n), n, results[name][str(n)]) for n in COUNTS]
        if getattr(model.llm, "_cache_size", 0) and model.compressor is None and not any(
            p.requires_grad for p in model.llm.parameters()
        ):  # a frozen text-only LLM caches each question's output: the same 16 questions asked again
            results[name]["16 asked before"] = cost(model, image, questions(16, trial))
            rows.append(("16 asked before", 16, results[name]["16 asked before"]))
        one = results[name]["1"]
        for label, n, elapsed in rows:
            section.rows.append([name, f"{size}²", label, round(elapsed, 3), round(elapsed / n, 3),
                                 f"{elapsed / one:.1f}x"])
        section.targets.append(Target(f"{name}: 16 questions / 1 question", results[name]["16"] / one, 6.0, "<"))
    section.data = results
    return section
