"""Markdown tables of evaluation results: the model beside the shuffled-question and image-blind controls and the
trivial floors, so gIoU is never read alone (empty-target samples give it a floor), in the letterboxed frame (as
the reference reports) and, when evaluated, at each image's native resolution."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

# N-acc / T-acc as GSVA: empty-target samples answered "no target" / the others answered with a mask
COLUMNS = (("giou", "gIoU"), ("ciou", "cIoU"), ("pr_0.5", "Pr@0.5"), ("n_acc", "N-acc"), ("t_acc", "T-acc"))
NATIVE = "native/"


def _fmt(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def _frames(metrics: dict[str, Any]) -> list[str]:
    """Key prefixes of the frames present: the letterboxed one, and the native one when it was evaluated."""
    return ["", NATIVE] if f"{NATIVE}giou" in metrics else [""]


def _row(label: str, metrics: dict[str, Any], frames: list[str], stem: str = "") -> str:
    cells = [_fmt(metrics.get(f"{frame}{stem}{key}")) for frame in frames for key, _ in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |"


def results_table(results: dict[str, Any], cfg: dict[str, Any]) -> str:
    """Overall table (+ per-concept table when the data names concepts) for ``evaluate``'s results."""
    split = "val" if "val" in results and "test" not in results else "test"
    metrics = results[split]["metrics"] if split == "test" else results[split]
    frames = _frames(metrics)
    size = cfg["data"]["image_size"]
    titles = [f"{'native ' if frame else ''}{title}" for frame in frames for _, title in COLUMNS]
    lines = [
        f"Scores in the {size}×{size} letterboxed frame (as the reference computes them)"
        + (" and at each image's native resolution (native …)." if NATIVE in frames else "."),
        "",
        f"| {cfg['name']} · {cfg['data'].get(f'{split}_split', split)} split (n={metrics.get('n')}) | "
        + " | ".join(titles) + " |",
        "|---" * (len(titles) + 1) + "|",
        _row("model, true questions", metrics, frames),
    ]
    if "test_shuffled" in results:
        lines.append(_row("model, questions shuffled across images", results["test_shuffled"]["metrics"], frames))
    if "test_image_blind" in results:
        lines.append(_row("model, visual tokens of another image", results["test_image_blind"]["metrics"], frames))
    lines.append(_row("floor: always predict empty", metrics, frames, "floor_empty_"))
    lines.append(_row("floor: always predict the whole image", metrics, frames, "floor_full_"))
    lines.append("")
    lines.append(empty_target_line(metrics))
    if "answer_n" in metrics:
        lines.append(f"Answer text ({int(metrics['answer_n'])} answers against the reference answers, normalised): "
                     f"exact match {metrics['answer_exact']:.3f}, token F1 {metrics['answer_f1']:.3f}.")
    if split == "test":
        lines.append(targets_table(results["test"]["samples"]))
        lines.append(concept_table(results["test"]["samples"]))
    return "\n".join(lines).rstrip()


def empty_target_line(metrics: dict[str, Any]) -> str:
    """How many samples have no target, and what N-acc / T-acc count."""
    if not metrics.get("n_empty"):
        return f"Empty-target samples: none of {metrics.get('n')} (N-acc undefined)."
    return (f"Empty-target samples: {metrics['n_empty']} of {metrics['n']}. N-acc: share of them answered \"no "
            "target\" (an empty mask); T-acc: share of the others answered with a mask.")


def concept_table(samples: list[dict[str, Any]]) -> str:
    """gIoU / cIoU per ``concept`` of the samples, per frame (empty when the data has no concepts)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        if s.get("concept"):
            groups[s["concept"]].append(s)
    if not groups:
        return ""
    frames = ["", NATIVE] if f"{NATIVE}iou" in samples[0] else [""]
    titles = [f"{'native ' if frame else ''}{title}" for frame in frames for title in ("gIoU", "cIoU")]
    routed = "routed" in samples[0]  # the concept_choice read-out names the concept that answered
    if routed:
        titles.append("routed to it")
    lines = ["", "| concept | n | " + " | ".join(titles) + " |", "|---" * (len(titles) + 2) + "|"]
    for concept in sorted(groups):
        rows = groups[concept]
        cells = []
        for frame in frames:
            union = sum(r[f"{frame}union"] for r in rows)
            cells.append(_fmt(sum(r[f"{frame}iou"] for r in rows) / len(rows)))
            cells.append(_fmt(sum(r[f"{frame}inter"] for r in rows) / union if union else float("nan")))
        if routed:
            cells.append(f"{sum(r['routed'] == concept for r in rows)}/{len(rows)}")
        lines.append(f"| {concept} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(samples: list[dict[str, Any]]) -> str:
    """Union gIoU / cIoU, per-target matched gIoU (the mean over ground-truth instances of each one's matched IoU)
    and the share of samples with the right count of targets, for the samples with several instances, with one, and
    all with a target (empty without per-target counts in the samples)."""
    if not samples or "targets" not in samples[0]:
        return ""
    groups = {
        "several targets (>= 2 instances)": [s for s in samples if s["targets"] >= 2],
        "one target": [s for s in samples if s["targets"] == 1],
        "every sample with a target": [s for s in samples if s["targets"] >= 1],
    }
    lines = ["", "| samples | n | instances | union gIoU | union cIoU | per-target matched gIoU | count right |",
             "|---|---|---|---|---|---|---|"]
    for label, rows in groups.items():
        if not rows:
            continue
        instances = sum(r["targets"] for r in rows)
        union = sum(r["union"] for r in rows)
        cells = [
            str(len(rows)), str(instances), _fmt(sum(r["iou"] for r in rows) / len(rows)),
            _fmt(sum(r["inter"] for r in rows) / union if union else float("nan")),
            _fmt(sum(r["target_iou_sum"] for r in rows) / instances),
            _fmt(sum(r["targets"] == r["predicted_targets"] for r in rows) / len(rows)),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
