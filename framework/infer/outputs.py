"""The files of ``segearth predict``: images + questions in, per sample a mask PNG, an overlay PNG and (for
georeferenced inputs) a mask GeoTIFF and GeoJSON polygons, plus one ``predictions.jsonl``. Each answer's targets
(``Prediction.targets``) are written as their id map (``<stem>_targets.png``, and ``<stem>_targets.tif`` for a
georeferenced input; pixel value i + 1 = target i of the row's ``targets``, 0 = none), one GeoJSON feature per
target, and an overlay with each target in its own colour.

Inputs: one image with its questions (``--image IMG --question Q``, repeatable), or a manifest (``.csv`` with
a header, or ``.jsonl``; fields ``image`` and ``question``, paths relative to the manifest) or a folder of images
together with ``--questions FILE`` (one question per line, each asked of every image).

Nothing is partially written: every question is checked and the model loaded before any image is read, outputs
go to a staging folder next to ``--out``, and only when every sample has succeeded does the staging folder become
``--out`` (by rename; an earlier predict output there is replaced whole, so the folder always holds exactly one
run's files). A folder holding anything else is refused, and so is a second predict into the same ``--out``
while one is writing (a lock file next to it).
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from framework.core.errors import DataError, UserError
from framework.core.slot_clock import SlotClock
from framework.data.geo import GeoReference, targets_geojson, write_json, write_mask_geotiff
from framework.eval.overlays import palette_rgb, render_overlay
from framework.infer.predictor import Prediction

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
OVERLAY_MAX_SIDE = 2048  # overlays of larger scenes are downscaled (the masks and GeoTIFFs keep full size)


def read_pairs(
    image: str | None, questions: list[str] | None, source: str | None, questions_file: str | None
) -> list[tuple[Path, str]]:
    """(image path, question) pairs: ``image`` with its ``questions``, or a manifest / folder ``source`` (a folder
    with ``questions_file``, one question per line); see the module docstring."""
    if image:
        if source or questions_file:
            raise UserError("predict: give either --image with --question, or --input (with --questions for a folder)")
        if not questions:
            raise UserError("predict: --image needs at least one --question")
        return [(Path(image), q) for q in questions]
    if not source:
        raise UserError(
            "predict: give --image IMG --question Q, or --input MANIFEST, or --input FOLDER --questions FILE"
        )
    source = Path(source)
    if source.is_dir():
        if not questions_file:
            raise UserError(f"predict: {source} is a folder: give the questions file with --questions")
        asked = [line.strip() for line in _read_text(Path(questions_file)).splitlines() if line.strip()]
        if not asked:
            raise DataError(f"{questions_file}: no questions (one per line)")
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return [(path, q) for path in images for q in asked]
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


def target_ids(prediction: Prediction) -> np.ndarray:
    """The id map [H,W] of the prediction's targets as a PNG holds it: uint8 up to 255 targets, else uint16 (the
    most a PNG holds: 65,535)."""
    count = len(prediction.targets)
    if count > np.iinfo(np.uint16).max:
        raise DataError(f"{count} targets: a target id map holds at most {np.iinfo(np.uint16).max}")
    dtype = np.uint8 if count <= np.iinfo(np.uint8).max else np.uint16
    if prediction.target_ids is None:
        return np.zeros(prediction.mask.shape, dtype)
    return prediction.target_ids.astype(dtype, copy=False)


def _caption(prediction: Prediction) -> str:
    """The overlay's caption: the question, then "no target" or the score and area (and the number of targets)."""
    if prediction.no_target and not prediction.targets:
        decided = "" if prediction.target_score is None else f", target score {prediction.target_score:.2f}"
        return f"{prediction.question}  (no target{decided})"
    numbers = f"score {prediction.score:.2f}, {prediction.area_px} px"
    if prediction.area_m2 is not None:
        numbers += f", {prediction.area_m2:,.0f} m2"
    count = len(prediction.targets)
    return f"{prediction.question}  ({count} target{'' if count == 1 else 's'}, {numbers})"


def _overlay(prediction: Prediction, ids: np.ndarray) -> Image.Image:
    """The overlay of ``prediction``, each target (``ids``: ``target_ids``) in its colour."""
    pixels, drawn = prediction.image.pixels, ids
    height, width = drawn.shape
    factor = OVERLAY_MAX_SIDE / max(height, width)
    if factor < 1:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
        drawn = np.asarray(Image.fromarray(drawn).resize(size, Image.NEAREST))
    return render_overlay(pixels, None, drawn, _caption(prediction))


def _id_colours(count: int) -> dict[int, tuple[int, int, int, int]]:
    """The GeoTIFF colour map of an id map of ``count`` targets: each in its overlay colour over transparent."""
    return {0: (0, 0, 0, 0)} | {index + 1: (*palette_rgb(index), 255) for index in range(count)}


def _geojson(prediction: Prediction, ids: np.ndarray, geo: GeoReference) -> dict:
    """The GeoJSON of ``prediction``: one (Multi)Polygon feature per target, with its ``target_id`` (its id in the
    row's ``targets``) and its ``score``; none: one unlocated ``no_target`` feature."""
    properties = {"question": prediction.question, "score": round(prediction.score, 6)}
    if prediction.target_score is not None:
        properties["target_score"] = round(prediction.target_score, 6)
    own = [{"target_id": i, "score": round(t.score, 6)} for i, t in enumerate(prediction.targets)]
    return targets_geojson(ids, own, geo, properties)


def write_sample(prediction: Prediction, index: int, folder: Path) -> dict:
    """The files of one prediction in ``folder``; returns its predictions.jsonl row (file names relative; the
    targets' id map: ``targets_mask``, ``targets_geotiff``)."""
    stem = f"{index:04d}_{prediction.image.name}"
    row = {"index": index, **prediction.record(), "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png"}
    Image.fromarray(prediction.mask.astype(np.uint8) * 255).save(folder / row["mask"])
    ids = target_ids(prediction)
    row["targets_mask"] = f"{stem}_targets.png"
    Image.fromarray(ids).save(folder / row["targets_mask"])
    _overlay(prediction, ids).save(folder / row["overlay"])
    geo = prediction.image.geo
    if geo is not None:
        row["mask_geotiff"] = f"{stem}_mask.tif"
        row["geojson"] = f"{stem}.geojson"
        write_mask_geotiff(folder / row["mask_geotiff"], prediction.mask, geo)
        row["targets_geotiff"] = f"{stem}_targets.tif"
        write_mask_geotiff(folder / row["targets_geotiff"], ids, geo, _id_colours(len(prediction.targets)))
        write_json(folder / row["geojson"], _geojson(prediction, ids, geo))
    return row


def check_output_folder(out: Path) -> None:
    """``out`` is an earlier predict output, an empty folder or can become one: its nearest existing ancestor is a
    writable folder. Otherwise a UserError, before any model is loaded."""
    if out.is_dir() and any(out.iterdir()) and not (out / "predictions.jsonl").is_file():
        raise UserError(f"--out {out}: the folder holds files that are not a segearth predict output; choose an "
                        "empty or new folder")
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"--out {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {ancestor} is not writable")


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _lock(out: Path) -> int:
    """An exclusive lock on ``_lock_path(out)`` (its descriptor), or a UserError while another process holds it."""
    fd = os.open(_lock_path(out), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"--out {out}: another segearth predict is writing there; wait for it or choose another "
                        "folder") from None
    return fd


def _replace_folder(staging: Path, out: Path) -> None:
    """``staging`` becomes ``out``; an earlier output there is moved aside first and removed after."""
    if not out.exists():
        os.rename(staging, out)
        return
    check_output_folder(out)  # it may have changed while the model ran
    aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
    os.rename(out, aside)
    os.rename(staging, out)
    shutil.rmtree(aside)


def write_predictions(
    predictor, pairs: list[tuple[Path, str]], out: Path, progress: bool = False, profile: dict[str, Any] | None = None
) -> list[dict]:
    """Predict every (image, question) pair with ``predictor`` (a ``Predictor``) and write its files and
    ``predictions.jsonl`` into ``out``; returns the rows. Nothing lands in ``out`` unless every sample succeeded.

    ``profile`` (e.g. ``{"load_s": ...}``): also write ``profile.json``, these entries plus the seconds spent
    predicting (reading images, the model, post-processing) and writing files, the counts of images, tiles and
    questions, and per model part its calls, batch rows and seconds (``framework.core.slot_clock``)."""
    check_output_folder(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = _lock(out)
    except OSError as exc:  # e.g. under /proc, or a read-only mount that os.access does not see
        raise UserError(f"--out {out}: cannot make a folder there ({exc.strerror or exc})") from None
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        rows, noted = [], set()
        seconds = {"predict_s": 0.0, "write_s": 0.0}
        predictions = predictor.iter_predictions(pairs, progress=progress)
        with SlotClock() if profile is not None else nullcontext() as clock:
            while True:
                started = time.perf_counter()
                prediction = next(predictions, None)
                predicted = time.perf_counter()
                seconds["predict_s"] += predicted - started
                if prediction is None:
                    break
                geo, path = prediction.image.geo, prediction.image.path
                if geo is not None and geo.crs is None and path not in noted:
                    noted.add(path)
                    print(f"note: {path} has a transform but no CRS: its mask GeoTIFF is written without a CRS and "
                          "its GeoJSON coordinates are in the file's own map units", file=sys.stderr)
                rows.append(write_sample(prediction, len(rows), staging))
                seconds["write_s"] += time.perf_counter() - predicted
        (staging / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        if profile is not None:
            images = {row["image"]: row["tiles"] for row in rows}
            summary = {**profile, **{k: round(v, 6) for k, v in seconds.items()}, "images": len(images),
                       "tiles": sum(images.values()), "questions": len(rows), "parts": clock.summary()}
            write_json(staging / "profile.json", summary)
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _lock_path(out).unlink(missing_ok=True)  # while still holding it: nothing is left next to --out
        os.close(lock)
    return rows
