"""``segearth predict``: answer questions about your own images (files written by ``framework.infer.outputs``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from framework.cli.common import add_model_arguments, load_model_of


def run(args: argparse.Namespace) -> None:
    # imported here, not at the top: ``segearth --help`` must not pay for torch
    from framework.infer.outputs import check_output_folder, read_pairs, write_predictions

    out = Path(args.out)
    check_output_folder(out)
    pairs = read_pairs(args.image, args.question, args.input, args.questions)
    started = time.perf_counter()
    predictor = load_model_of(args)
    profile = {"load_s": round(time.perf_counter() - started, 6)} if args.profile else None
    rows = write_predictions(predictor, pairs, out, sys.stderr.isatty() and not args.no_progress, profile)
    for row in rows:
        where = f", {row['area_m2']:,.0f} m²" if row["area_m2"] is not None else ""
        count = len(row["targets"])
        answer = "no target" if row["no_target"] else (
            f"{count} target{'' if count == 1 else 's'}, {row['area_px']} px{where}, score {row['score']:.2f}")
        said = f": {row['answer']!r}" if row["answer"] is not None else ""
        print(f"{row['image']}: {row['question']!r} -> {answer}{said}")
    print(f"wrote {len(rows)} prediction(s) to {out} (predictions.jsonl{', profile.json' if args.profile else ''})")
    if predictor.answer_note:
        print(f"note: {predictor.answer_note}", file=sys.stderr)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="answer questions about your own images (GeoTIFF in -> mask GeoTIFF + GeoJSON out)",
        description="Answer questions about your own images: per sample a mask PNG and an overlay PNG, for "
        "GeoTIFFs also a mask GeoTIFF and GeoJSON polygons in the input's CRS, and one predictions.jsonl. Large "
        "scenes are predicted in overlapping tiles whose logits are blended.",
    )
    add_model_arguments(p)
    p.add_argument("--image", help="one image (GeoTIFF, PNG, JPEG, ...)")
    p.add_argument("--question", action="append", help="question to ask of --image (repeatable)")
    p.add_argument("--input", help="manifest (.csv/.jsonl with image, question) or a folder of images")
    p.add_argument("--questions", help="with a folder --input: text file, one question per line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--profile", action="store_true", help="also write profile.json: seconds of loading, predicting "
                   "and writing, and each model part's calls, batch rows and seconds")
    p.set_defaults(func=run)
