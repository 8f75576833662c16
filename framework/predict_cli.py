"""``segearth predict``: images + questions in, per sample a mask PNG, an overlay PNG and (for georeferenced
inputs) a mask GeoTIFF and GeoJSON polygons, plus one ``predictions.jsonl``.

Inputs: ``--image IMG --question Q`` (``--question`` repeatable), or ``--input`` naming a manifest (``.csv`` with
a header, or ``.jsonl``; fields ``image`` and ``question``, paths relative to the manifest) or a folder of images
together with ``--questions FILE`` (one question per line, each asked of every image).

Nothing is partially written: every question is checked and the model loaded before any image is read, outputs
go to a staging folder next to ``--out`` and are moved into ``--out`` only when every sample has succeeded.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from framework.errors import DataError, UserError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
OVERLAY_MAX_SIDE = 2048  # overlays of larger scenes are downscaled (the masks and GeoTIFFs keep full size)


def read_inputs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """(image path, question) pairs from the command line (see the module docstring)."""
    if args.image:
        if args.input or args.questions:
            raise UserError("predict: give either --image with --question, or --input (with --questions for a folder)")
        if not args.question:
            raise UserError("predict: --image needs at least one --question")
        return [(Path(args.image), q) for q in args.question]
    if not args.input:
        raise UserError(
            "predict: give --image IMG --question Q, or --input MANIFEST, or --input FOLDER --questions FILE"
        )
    source = Path(args.input)
    if source.is_dir():
        if not args.questions:
            raise UserError(f"predict: {source} is a folder: give the questions file with --questions")
        questions = [line.strip() for line in _read_text(Path(args.questions)).splitlines() if line.strip()]
        if not questions:
            raise DataError(f"{args.questions}: no questions (one per line)")
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return [(image, q) for image in images for q in questions]
    if not source.is_file():
        raise DataError(f"{source}: input not found")
    text = _read_text(source)
    if source.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{source}:{number}: invalid JSON ({exc.msg})") from None
    else:
        reader = csv.DictReader(text.splitlines())
        rows = [(number, row) for number, row in enumerate(reader, start=2)]
    pairs = []
    for number, row in rows:
        if not isinstance(row, dict) or not row.get("image") or "question" not in row:
            raise DataError(f"{source}:{number}: needs 'image' and 'question'")
        pairs.append((source.parent / str(row["image"]).strip(), str(row["question"] or "")))
    if not pairs:
        raise DataError(f"{source}: no rows")
    return pairs


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _overlay(prediction) -> Image.Image:
    from framework.overlays import render_overlay

    pixels, mask = prediction.image.pixels, prediction.mask
    height, width = mask.shape
    factor = OVERLAY_MAX_SIDE / max(height, width)
    if factor < 1:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    caption = f"{prediction.question}  (score {prediction.score:.2f}, {prediction.area_px} px"
    caption += f", {prediction.area_m2:,.0f} m2)" if prediction.area_m2 is not None else ")"
    return render_overlay(pixels, None, mask, caption)


def write_sample(prediction, index: int, folder: Path) -> dict:
    """The files of one prediction in ``folder``; returns its predictions.jsonl row (file names relative)."""
    from framework.geo import mask_geojson, write_json, write_mask_geotiff

    stem = f"{index:04d}_{prediction.image.name}"
    row = {"index": index, **prediction.record(), "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png"}
    Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(folder / row["mask"])
    _overlay(prediction).save(folder / row["overlay"])
    geo = prediction.image.geo
    if geo is not None:
        row["mask_geotiff"] = f"{stem}_mask.tif"
        row["geojson"] = f"{stem}.geojson"
        write_mask_geotiff(folder / row["mask_geotiff"], prediction.mask, geo)
        properties = {"question": prediction.question, "score": round(prediction.score, 6)}
        write_json(folder / row["geojson"], mask_geojson(prediction.mask, geo, properties))
    return row


def run_predict(args: argparse.Namespace) -> Path:
    from framework.predict import load_model

    out = Path(args.out)
    pairs = read_inputs(args)
    model = load_model(
        args.model, device=args.device, tracking_uri=args.uri, batch_size=args.batch_size, tiling=args.tiling,
        tile_size=args.tile_size, overlap=args.overlap, tile_batch=args.tile_batch, tta=args.tta,
    )
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        rows, noted = [], set()
        progress = sys.stderr.isatty() and not args.no_progress
        for index, prediction in enumerate(model.iter_predictions(pairs, progress=progress)):
            geo, path = prediction.image.geo, prediction.image.path
            if geo is not None and geo.crs is None and path not in noted:
                noted.add(path)
                print(f"note: {path} has a transform but no CRS: its mask GeoTIFF is written without a CRS and "
                      "its GeoJSON coordinates are in the file's own map units", file=sys.stderr)
            rows.append(write_sample(prediction, index, staging))
        (staging / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for file in sorted(staging.iterdir()):
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for row in rows:
        where = f", {row['area_m2']:,.0f} m²" if row["area_m2"] is not None else ""
        print(f"{row['image']}: {row['question']!r} -> {row['area_px']} px{where}, score {row['score']:.2f}")
    print(f"wrote {len(rows)} prediction(s) to {out} (predictions.jsonl)")
    return out


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the ``segearth`` sub-commands."""
    p = subparsers.add_parser(
        "predict",
        help="answer questions about your own images (GeoTIFF in -> mask GeoTIFF + GeoJSON out)",
        description="Answer questions about your own images: per sample a mask PNG and an overlay PNG, for "
        "GeoTIFFs also a mask GeoTIFF and GeoJSON polygons in the input's CRS, and one predictions.jsonl. Large "
        "scenes are predicted in overlapping tiles whose logits are blended.",
    )
    p.add_argument("--model", required=True, help="bundle folder, models:/NAME@ALIAS, run folder or .ckpt file")
    p.add_argument("--image", help="one image (GeoTIFF, PNG, JPEG, ...)")
    p.add_argument("--question", action="append", help="question to ask of --image (repeatable)")
    p.add_argument("--input", help="manifest (.csv/.jsonl with image, question) or a folder of images")
    p.add_argument("--questions", help="with a folder --input: text file, one question per line")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tiling", choices=("auto", "always", "never"), help="default: the model config's predict.tiling")
    p.add_argument("--tile-size", type=int, help="tile side in native pixels (default: predict.tile_size)")
    p.add_argument("--overlap", type=float, help="fraction of a tile shared with its neighbours (default 0.25)")
    p.add_argument("--tile-batch", type=int, help="tiles encoded at once (bounds memory)")
    p.add_argument("--tta", choices=("none", "flips", "dihedral"), help="test-time augmentation: mean logits of 4 or 8 "
                   "flipped/turned views (default: predict.tta)")
    p.add_argument("--batch-size", type=int, default=8, help="(tile, question) pairs per forward pass")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--uri", help="tracking URI for models:/ (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)
