"""Markdown tables of evaluation results: the model beside the shuffled-question control and the trivial floors,
so gIoU is never read alone (empty-target samples give it a floor)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

COLUMNS = ("giou", "ciou", "pr_0.5")


def _fmt(value: Any) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"


def _row(label: str, metrics: dict[str, Any], prefix: str = "") -> str:
    cells = [_fmt(metrics.get(f"{prefix}{c}")) for c in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |"


def results_table(results: dict[str, Any], cfg: dict[str, Any]) -> str:
    """Overall table (+ per-concept table when the data names concepts) for ``evaluate``'s results."""
    split = "val" if "val" in results and "test" not in results else "test"
    metrics = results[split]["metrics"] if split == "test" else results[split]
    header = f"| {cfg['name']} · {split} split (n={metrics.get('n')}) | gIoU | cIoU | Pr@0.5 |\n|---|---|---|---|"
    lines = [header, _row("model, true questions", metrics)]
    if "test_shuffled" in results:
        lines.append(_row("model, questions shuffled across images", results["test_shuffled"]["metrics"]))
    lines.append(_row("floor: always predict empty", metrics, "floor_empty_"))
    lines.append(_row("floor: always predict the whole image", metrics, "floor_full_"))
    if metrics.get("n_empty"):
        lines.append(
            f"\nEmpty-target samples: {metrics['n_empty']} of {metrics['n']}; predicted empty: "
            f"{_fmt(metrics['empty_accuracy'])}."
        )
    if split == "test":
        lines.append(concept_table(results["test"]["samples"]))
    return "\n".join(line for line in lines if line)


def concept_table(samples: list[dict[str, Any]]) -> str:
    """gIoU / cIoU per ``concept`` of the samples (empty when the data has no concepts)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        if s.get("concept"):
            groups[s["concept"]].append(s)
    if not groups:
        return ""
    lines = ["\n| concept | n | gIoU | cIoU |", "|---|---|---|---|"]
    for concept in sorted(groups):
        rows = groups[concept]
        giou = sum(r["iou"] for r in rows) / len(rows)
        union = sum(r["union"] for r in rows)
        ciou = sum(r["inter"] for r in rows) / union if union else float("nan")
        lines.append(f"| {concept} | {len(rows)} | {_fmt(giou)} | {_fmt(ciou)} |")
    return "\n".join(lines)
