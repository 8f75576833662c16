"""The dataset on disk: ``write_synthetic_dataset`` builds each scene, chooses its samples and writes them
as EarthReason images, labels, instance maps and QA files per split, after checking its arguments;
``split_sizes`` gives the scenes per split."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from framework.core.errors import DataError
from framework.data.earthreason import prepare_split_folders
from framework.data.synth.concepts import CLASS_CONCEPTS, SPLITS
from framework.data.synth.phrasings import _questions
from framework.data.synth.scene import _SceneBuilder
from framework.data.synth.targets import _choose_targets, _Target

MIN_IMAGE_SIZE = 64
MAX_INSTANCES = 255  # the ids an 8-bit instance map can hold


def split_sizes(n: int) -> dict[str, int]:
    """Scenes per split for ``n`` scenes: 15% val and 15% test (at least one each), the rest train."""
    held_out = max(1, int(n * 0.15 + 0.5))
    return {"train": n - 2 * held_out, "val": held_out, "test": held_out}


def write_synthetic_dataset(out: Path, n: int, seed: int, image_size: int = 256, samples_per_scene: int = 3,
                            overwrite: bool = False) -> dict[str, int]:
    """Writes ``n`` scenes as out/{train,val,test}/{images,labels,instances,QAs}; returns the samples per split.

    Scenes 0..n-1 go to train, val and test in consecutive blocks (``split_sizes``); scene i is drawn from
    ``np.random.default_rng([seed, i])`` alone, so its content does not depend on ``n``. Raises DataError
    on arguments that cannot make a dataset, or when a split folder already holds files and ``overwrite``
    is False (with ``overwrite`` the split's images/labels/instances/QAs folders are emptied first).
    """
    out = Path(out)
    _check_arguments(out, n, seed, image_size, samples_per_scene)
    prepare_split_folders(out, SPLITS, overwrite, instances=True)
    counts = dict.fromkeys(SPLITS, 0)
    sizes = split_sizes(n)
    splits = [split for split in SPLITS for _ in range(sizes[split])]
    for scene_index, split in enumerate(splits):
        rng = np.random.default_rng([seed, scene_index])
        builder = _SceneBuilder(rng, image_size)
        image, instances = builder.build()
        targets = _choose_targets(rng, instances, builder.main_road_rows, image_size, samples_per_scene)
        # Phrasings come from their own stream so that a scene's content stays the same in any split.
        phrasing_rng = np.random.default_rng([seed, scene_index, 1])
        jpeg = _encode(Image.fromarray(image), "JPEG", quality=95)
        folder = out / split
        for k, target in enumerate(targets):
            stem = f"{scene_index:05d}_{k}"
            image_path = folder / "images" / f"{stem}.jpg"
            if k == 0:
                image_path.write_bytes(jpeg)
            else:  # the scene's other samples link its image: readers see that they share one image
                image_path.symlink_to(f"{scene_index:05d}_0.jpg")
            label = Image.fromarray(target.mask.astype(np.uint8) * 255)
            (folder / "labels" / f"{stem}.png").write_bytes(_encode(label, "PNG"))
            ids = Image.fromarray(_instance_map(target, f"{folder}/instances/{stem}.png"))
            (folder / "instances" / f"{stem}.png").write_bytes(_encode(ids, "PNG"))
            qa = {
                "questions": _questions(phrasing_rng, target.concept, split),
                "answer": [] if target.answer is None else [target.answer],
                "concept": target.concept,
                "scene": scene_index,
            }
            (folder / "QAs" / f"{stem}.json").write_text(json.dumps(qa, indent=2) + "\n", encoding="utf-8")
        counts[split] += len(targets)
    return counts


def _instance_map(target: _Target, where: str) -> np.ndarray:
    """(S, S) uint8 ids of the target's instances: 0 off target, 1..n by decreasing visible area (ties in the
    scene's order). Where instances overlap the smaller one's id wins: painted last, it keeps every pixel. An
    instance left without a pixel gets no id, so the ids stay 1..n; ids > 0 cover exactly ``target.mask``."""
    order = sorted(target.instances, key=lambda mask: -int(mask.sum()))
    painted = np.zeros(target.mask.shape, dtype=np.int64)
    for rank, mask in enumerate(order, start=1):
        painted[mask] = rank
    kept = np.unique(painted[painted > 0])
    if len(kept) > MAX_INSTANCES:
        raise DataError(f"{where}: {len(kept)} target instances, an 8-bit instance map holds {MAX_INSTANCES}")
    ids = np.zeros(len(order) + 1, dtype=np.uint8)
    ids[kept] = np.arange(1, len(kept) + 1)
    return ids[painted]


def _check_arguments(out: Path, n: int, seed: int, image_size: int, samples_per_scene: int) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"synthetic data output {out} exists and is not a folder")
    if n < len(SPLITS):
        raise DataError(f"synthetic data needs at least {len(SPLITS)} scenes (one per split), got n={n}")
    if seed < 0:
        raise DataError(f"synthetic data seed must be >= 0, got {seed}")
    if image_size < MIN_IMAGE_SIZE:
        raise DataError(f"synthetic image size must be >= {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if not 1 <= samples_per_scene <= len(CLASS_CONCEPTS):
        raise DataError(f"samples per scene must be in 1..{len(CLASS_CONCEPTS)}, got {samples_per_scene}")


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
