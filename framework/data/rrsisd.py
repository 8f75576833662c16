"""RRSIS-D in the refer-API layout, ``root`` being the ``RRSIS-D`` folder::

    <root>/rrsisd/refs(unc).p                 pickle: list of refs {ref_id, ann_id, image_id, split,
                                              sentences: [{raw, sent, ...}], category_id, file_name, ...}
    <root>/rrsisd/instances.json              COCO: images [{id, file_name, width, height}],
                                              annotations [{id, image_id, segmentation, bbox, category_id}],
                                              categories [{id, name}]
    <root>/images/rrsisd/JPEGImages/<file_name>

One sample per sentence of each ref of ``split`` (``questions='all'``), or its first sentence (``'first'``, what
the reference trains and evaluates on). Unlike the reference, the image is looked up by the ref's ``image_id``
(the reference indexes images by ``ref_id``), and masks are decoded at the image's size from instances.json
with their parts OR-ed (the reference decodes at a fixed 800x800 and sums parts without clipping). Polygons are
filled with Pillow (boundary pixels included, so edges can differ by a pixel from pycocotools); RLE, compressed
or not, is decoded here. ``concept`` is the COCO category name; ``answer`` is empty (the format has none).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from framework.core.errors import DataError
from framework.core.registry import DATASETS
from framework.data.samples import Sample, SampleDataset

REFS_FILE = Path("rrsisd") / "refs(unc).p"
INSTANCES_FILE = Path("rrsisd") / "instances.json"
IMAGE_DIR = Path("images") / "rrsisd" / "JPEGImages"


def rle_counts_from_string(text: str | bytes) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``): each count is stored in
    6-bit characters offset by 48, 5 value bits each, least significant first, bit 0x20 = another character
    follows, bit 0x10 of the last = negative; from the third count on, counts are stored as the difference to the
    count two before."""
    data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    counts: list[int] = []
    p = 0
    while p < len(data):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(data):
                raise DataError(f"compressed RLE string ends inside a count: {data[-20:]!r}")
            c = data[p] - 48
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p, shift = p + 1, shift + 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE ``{'size': [h, w], 'counts': list[int] | str}`` → bool [h,w]. Runs alternate background /
    target, starting with background, over the pixels in column-major order."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
        counts = rle_counts_from_string(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"RLE must be {{'size': [h, w], 'counts': list or string}} ({exc!r})") from None
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise DataError(
            f"RLE counts cover {sum(counts)} pixels (or are negative); size {height}x{width} needs {height * width}"
        )
    runs = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return runs.reshape(width, height).T


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO ``segmentation`` (list of polygons [x1, y1, x2, y2, ...], an RLE dict, or a list of RLE dicts) →
    bool [height,width], the union of its parts."""
    parts = [segmentation] if isinstance(segmentation, dict) else segmentation
    if not isinstance(parts, list):
        raise DataError(f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    mask = np.zeros((height, width), dtype=bool)
    for part in parts:
        if isinstance(part, dict):
            decoded = decode_rle(part)
            if decoded.shape != mask.shape:
                raise DataError(f"RLE size {list(decoded.shape)} differs from the image size {[height, width]}")
            mask |= decoded
        elif not isinstance(part, list) or len(part) % 2 or len(part) < 6:
            got = f"{len(part)} coordinates" if isinstance(part, list) else type(part).__name__
            raise DataError(f"polygon with {got}; expected a list of x, y pairs of at least 3 points")
        else:
            draw.polygon([(float(x), float(y)) for x, y in zip(part[0::2], part[1::2])], fill=1)
    return mask | (np.asarray(canvas) > 0)


@dataclass(frozen=True)
class CocoMask:
    """A COCO annotation's mask, decoded when read."""

    segmentation: Any
    height: int
    width: int
    where: str  # "<instances.json> annotation <id>", for messages

    def read(self) -> np.ndarray:
        try:
            return decode_segmentation(self.segmentation, self.height, self.width)
        except DataError as exc:
            raise DataError(f"{self.where}: {exc}") from None

    def __str__(self) -> str:
        return self.where


class _PlainUnpickler(pickle.Unpickler):
    """Loads lists, dicts, strings and numbers only: a refs file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a refs file holds only lists and dicts")


def _load_refs(path: Path) -> list[dict]:
    try:
        with open(path, "rb") as f:
            refs = _PlainUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable refs pickle ({exc})") from None
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"{path}: expected a pickled list of ref dicts")
    return refs


def _index_instances(path: Path) -> tuple[dict, dict, dict]:
    """(images by id, annotations by id, category names by id) of a COCO instances file."""
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im for im in coco["images"]}
        annotations = {ann["id"]: ann for ann in coco["annotations"]}
        categories = {cat["id"]: str(cat.get("name", "")) for cat in coco.get("categories", [])}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a UTF-8 JSON file ({exc})") from None
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not COCO instances (needs images and annotations with ids; {exc!r})") from None
    return images, annotations, categories


@DATASETS.register("rrsisd")
class RRSISDDataset(SampleDataset):
    """RRSIS-D refs of one split (``train``, ``val``, ``test``, as named in the refs file)."""

    def __init__(
        self,
        root: str,
        split: str,
        image_size: int,
        questions: str = "all",
        bands: list[int] | None = None,
        scale: str | float = "auto",
        on_bad_sample: str = "error",
    ) -> None:
        super().__init__(image_size, questions, bands, scale, on_bad_sample)
        base = Path(root)
        refs_path, instances_path, image_dir = base / REFS_FILE, base / INSTANCES_FILE, base / IMAGE_DIR
        missing = [str(p) for p in (refs_path, instances_path) if not p.is_file()]
        if not image_dir.is_dir():
            missing.append(f"{image_dir}/")
        if missing:
            raise DataError(f"{root}: RRSIS-D files missing: {', '.join(missing)} (see the rrsisd format's layout)")
        refs = _load_refs(refs_path)
        images, annotations, categories = _index_instances(instances_path)
        chosen = [r for r in refs if r.get("split") == split]
        if not chosen:
            splits = sorted({str(r.get("split")) for r in refs})
            raise DataError(f"{refs_path}: no refs of split '{split}' (its splits: {', '.join(splits)})")
        for ref in chosen:
            with self.entry(f"{refs_path} ref {ref.get('ref_id')}"):
                self.samples += self._ref_samples(ref, images, annotations, categories, image_dir, instances_path)
        self.finish_index(refs_path)

    def _ref_samples(
        self, ref: dict, images: dict, annotations: dict, categories: dict, image_dir: Path, instances_path: Path
    ) -> list[Sample]:
        lacking = [k for k in ("ref_id", "ann_id", "image_id", "sentences") if k not in ref]
        if lacking:
            raise DataError(f"ref {ref.get('ref_id')}: missing {', '.join(lacking)}")
        ref_id, ann_id, image_id = ref["ref_id"], ref["ann_id"], ref["image_id"]
        image = images.get(image_id)
        if image is None:
            raise DataError(f"ref {ref_id}: image_id {image_id} is not in {instances_path}")
        annotation = annotations.get(ann_id)
        if annotation is None:
            raise DataError(f"ref {ref_id}: ann_id {ann_id} is not in {instances_path}")
        if annotation.get("image_id") != image_id:
            raise DataError(
                f"ref {ref_id}: annotation {ann_id} belongs to image {annotation.get('image_id')}, the ref to image "
                f"{image_id}"
            )
        if not all(k in image for k in ("file_name", "height", "width")) or "segmentation" not in annotation:
            raise DataError(
                f"ref {ref_id}: image {image_id} needs file_name/height/width and annotation {ann_id} a "
                f"segmentation in {instances_path}"
            )
        path = image_dir / image["file_name"]
        if not path.is_file():
            raise DataError(f"{path}: image of ref {ref_id} not found")
        listed = ref["sentences"] if isinstance(ref["sentences"], list) else []
        sentences = [s.get("raw") if isinstance(s, dict) else None for s in listed]
        if not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
            raise DataError(f"ref {ref_id}: 'sentences' must be a non-empty list of {{'raw': non-empty text}}")
        where = f"{instances_path} annotation {ann_id}"
        mask = CocoMask(annotation["segmentation"], int(image["height"]), int(image["width"]), where)
        concept = categories.get(annotation.get("category_id", ref.get("category_id")), "")
        chosen = sentences if self.questions == "all" else sentences[:1]
        return [Sample(Path(image["file_name"]).stem, path, mask, s.strip(), "", True, concept) for s in chosen]
