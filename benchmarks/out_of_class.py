"""``python -m benchmarks.out_of_class --model M [--root data/dubai] [--split test] [--out FILE.json]``: what a
model answers when asked about a surface that none of its training classes covers, beside what it answers about
the classes it was trained on.

The split must be in the layout ``segearth data dubai`` writes: one sample per (image, class), stem
``<image>_<class>``, whose labels together give every class region of the image. Each image is asked the first
question of each of its class samples (in-class; a class absent from the image is an in-class question with no
target) and every ``OUT_OF_CLASS`` question, whole image letterboxed as in ``segearth test`` (no tiling).

Reported per kind of question: how many answers are empty, the mean answer area (share of the image), the mean
score of the non-empty answers (mean probability over the mask) and, for those, the best IoU of the answer with
any one class region of the image. An open model that answers a question outside its classes with "a confident
mask of the nearest class" shows a high score and a high best-class IoU there; one that does not know shows empty
or low-score answers that match no class.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from framework.core.errors import DataError, UserError

# surfaces none of the five Dubai classes (land, water, building, vegetation, road) covers, and none of its
# tiles shows
OUT_OF_CLASS = (
    "Where is the snow?",
    "Which areas are covered by glacier ice?",
    "Where are the railway tracks?",
    "Where is the lava field?",
    "Where are the ski slopes?",
    "Which fields are flooded rice paddies?",
)
KINDS = ("in-class, target present", "in-class, no target", "out-of-class")


@dataclass
class Answer:
    """One (image, question) answer: ``kind`` one of KINDS; ``area`` share of the image; ``best_iou`` the best IoU
    with one class region of the image (0 for an empty answer), ``best_class`` that class."""

    image: str
    question: str
    kind: str
    area: float
    score: float
    best_iou: float
    best_class: str | None
    iou: float | None  # with the asked class's region, for in-class questions


@dataclass
class Summary:
    kind: str
    answers: int
    empty: int
    mean_area: float
    mean_score_nonempty: float | None
    mean_best_iou_nonempty: float | None


def class_regions(root: Path, split: str) -> dict[str, tuple[Path, dict[str, np.ndarray], dict[str, str]]]:
    """image name -> (image file, class -> bool [H,W] region, class -> its sample's first question)."""
    qa_dir = root / split / "QAs"
    if not qa_dir.is_dir():
        raise DataError(f"{qa_dir}: not found (convert the tiles with `segearth data dubai`)")
    images: dict[str, tuple[Path, dict[str, np.ndarray], dict[str, str]]] = {}
    for qa_path in sorted(qa_dir.glob("*.json")):
        qa = json.loads(qa_path.read_text(encoding="utf-8"))
        concept = qa["concept"]
        image_name = qa_path.stem.removesuffix(f"_{concept}")
        image_file = next((root / split / "images").glob(f"{qa_path.stem}.*"))
        label = np.asarray(Image.open(root / split / "labels" / f"{qa_path.stem}.png")) > 0
        entry = images.setdefault(image_name, (image_file, {}, {}))
        entry[1][concept] = label
        entry[2][concept] = qa["questions"][0]
    return images


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def answers(predictor, root: Path, split: str, out_of_class: tuple[str, ...] = OUT_OF_CLASS) -> list[Answer]:
    """Every image of ``root/split`` asked its class questions and ``out_of_class`` with ``predictor``
    (a ``framework.infer.Predictor``)."""
    rows = []
    for image_name, (image_file, regions, asked) in class_regions(root, split).items():
        questions = [(asked[c], c) for c in sorted(asked)] + [(q, None) for q in out_of_class]
        predictions = predictor.predict(image_file, [q for q, _ in questions])
        for (question, concept), prediction in zip(questions, predictions):
            mask = prediction.mask
            ious = {c: _iou(mask, region) for c, region in regions.items()} if mask.any() else {}
            best = max(ious, key=ious.get) if ious else None
            if concept is None:
                kind = KINDS[2]
            else:
                kind = KINDS[0] if regions[concept].any() else KINDS[1]
            rows.append(Answer(
                image=image_name, question=question, kind=kind, area=float(mask.mean()),
                score=float(prediction.score), best_iou=ious.get(best, 0.0), best_class=best,
                iou=_iou(mask, regions[concept]) if concept else None,
            ))
    return rows


def summarise(rows: list[Answer]) -> list[Summary]:
    by_kind: dict[str, list[Answer]] = defaultdict(list)
    for row in rows:
        by_kind[row.kind].append(row)
    summaries = []
    for kind in KINDS:
        group = by_kind.get(kind, [])
        if not group:
            continue
        nonempty = [r for r in group if r.area > 0]
        summaries.append(Summary(
            kind=kind, answers=len(group), empty=len(group) - len(nonempty),
            mean_area=float(np.mean([r.area for r in group])),
            mean_score_nonempty=float(np.mean([r.score for r in nonempty])) if nonempty else None,
            mean_best_iou_nonempty=float(np.mean([r.best_iou for r in nonempty])) if nonempty else None,
        ))
    return summaries


def markdown(summaries: list[Summary]) -> str:
    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    lines = ["| questions | answers | empty | mean area | mean score (non-empty) | best-class IoU (non-empty) |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.kind} | {s.answers} | {s.empty} | {number(s.mean_area)} | "
                     f"{number(s.mean_score_nonempty)} | {number(s.mean_best_iou_nonempty)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.out_of_class", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint, run folder, bundle or models:/ URI")
    parser.add_argument("--root", type=Path, default=Path("data/dubai"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, help="also write every answer and the summary as JSON here")
    parser.add_argument("--target-threshold", type=float, help="the target decision's threshold (default: the "
                        "model config's eval.target_threshold)")
    args = parser.parse_args(argv)
    from framework.infer.predictor import load_model

    try:
        rows = answers(load_model(args.model, tiling="never", target_threshold=args.target_threshold), args.root,
                       args.split)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summaries = summarise(rows)
    print(markdown(summaries))
    if args.out:
        args.out.write_text(json.dumps({"summary": [asdict(s) for s in summaries],
                                        "answers": [asdict(r) for r in rows]}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
