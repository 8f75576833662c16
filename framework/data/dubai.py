"""The Dubai aerial tiles (real images, real RGB-coded masks) as an EarthReason-layout benchmark with templated
implicit questions.

Source layout (``../shared/data/dubai-aerial``, see its README)::

    src/tile-N/images/image_part_00K.jpg   RGB JPEG
    src/tile-N/masks/image_part_00K.png    RGB (or palette) PNG, one colour per class (``CLASS_COLOURS``)

Output layout (read by the ``earthreason`` dataset format)::

    out/{train,val,test}/images/<stem>.jpg   symlink to the source JPEG (a copy where symlinks fail)
    out/{train,val,test}/labels/<stem>.png   8-bit grayscale, 255 = pixels of the class, 0 elsewhere
    out/{train,val,test}/QAs/<stem>.json     {"questions": [QUESTIONS_PER_SAMPLE phrasings], "answer": [one
                                              sentence] or [] when the class is absent, "concept": class,
                                              "tile": N}

``<stem>`` is ``tile-N_<image stem>_<class>``: every image is asked about each of the five classes, and a class
absent from the image gives a no-target sample (empty answer, all-zero label). Those are kept on purpose: they
are what an always-empty prediction scores on, so the benchmark can tell a model that reads the question from
one that does not.

Splits are by tile, never by image (neighbouring crops of a tile overlap): tiles 1-4 train, tile 5 validation,
tile 6 test (``SPLIT_TILES``). Every choice of configuration or prompt is made on tile 5; tile 6 is read once per
kept design. Questions of a split come from the split's own phrasing pool (``PHRASINGS``): validation and test
phrasings never occur in training, nor test phrasings in validation. ``heldout_phrasings="train"`` asks tiles 5
and 6 with the training pool instead: a diagnostic, not the benchmark. The same checkpoint tested on both
conversions separates what is lost to unseen phrasings (language) from what is lost on the tile's pixels
(vision).

Mask colours are the ones measured on the masks (the table in docs/guide/data.md), not those of
``classes-as-shipped.json``.
Unlabeled pixels (#9B9B9B, and the few pure black #000000) are 0 in every label: they belong to no class, so
they are never the target, and count as background in IoU. The PNG masks are lossless, so colours must match
exactly; any other colour is a DataError naming the file.

Questions are drawn from ``np.random.default_rng([seed, crc32(stem)])``: a sample depends only on (seed, stem),
and equal arguments write identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from framework.core.errors import DataError
from framework.data.earthreason import prepare_split_folders

SPLIT_TILES: dict[str, tuple[int, ...]] = {"train": (1, 2, 3, 4), "val": (5,), "test": (6,)}
SPLITS = tuple(SPLIT_TILES)
CLASS_COLOURS: dict[str, int] = {
    "land": 0x8429F6,
    "water": 0xE2A929,
    "building": 0x3C1098,
    "vegetation": 0xFEDD3A,
    "road": 0x6EC1E4,
}
CLASSES = tuple(CLASS_COLOURS)
UNLABELED_COLOURS = (0x9B9B9B, 0x000000)
QUESTIONS_PER_SAMPLE = 4

# class -> split -> phrasings. Every question names the class only implicitly (by use, look or purpose); the
# pools are disjoint across splits (a test checks it), so val and test measure new wording, and test wording was
# never used to choose anything.
PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "land": {
        "train": (
            "Which ground is bare and unpaved?",
            "Where is the open sand with nothing built on it?",
            "Which areas are undeveloped desert?",
            "Where could a new building go without demolishing anything?",
            "Which parts of the scene are plain soil or sand?",
            "Where would a camel walk without crossing a street?",
            "Which empty plots are waiting to be developed?",
            "Where is the land that has no pavement, water or plants?",
            "Which surfaces are dusty and unsealed?",
            "Where could a dune buggy drive off-road?",
            "Which areas are vacant lots?",
            "Where is the barren ground?",
        ),
        "val": (
            "Which terrain is left as natural sand or dirt?",
            "Where is the unbuilt, unpaved ground?",
            "Which stretches of the image are empty desert land?",
            "Where could a construction company start building right away?",
            "Which areas have neither roads, roofs, water nor greenery?",
            "Where is the bare earth?",
        ),
        "test": (
            "Where is the ground still waiting for its first building?",
            "Which parts are loose sand and gravel with no surface laid on them?",
            "Where could a bulldozer level a plot without tearing anything down?",
            "Which open areas are neither paved, built on, wet nor green?",
            "Where does the desert show through between the developments?",
            "Which patches of the image are raw, unworked earth?",
        ),
    },
    "water": {
        "train": (
            "Where could a boat moor?",
            "Which area could a yacht sail across?",
            "Where would you go for a swim?",
            "Which part of the scene holds water?",
            "Where could a jet ski ride?",
            "Which region would a seaplane land on?",
            "Where is the sea or a pool?",
            "Which areas are covered by water?",
            "Where could someone fish from a boat?",
            "Which parts of the image would get you wet?",
            "Where do ships travel?",
            "Which surfaces are the canal, the sea or pools?",
        ),
        "val": (
            "Where might a sailing boat be anchored?",
            "Which area would a swimmer head for on a hot day?",
            "Where is the body of water in this picture?",
            "Which zone could a water-skier use?",
            "Where could a ferry cross?",
            "Which parts of the scene are liquid rather than solid ground?",
        ),
        "test": (
            "Where could a kayak paddle?",
            "Which surfaces would reflect the sky like a mirror?",
            "Where might a fishing boat be found?",
            "Which part of the picture could a speedboat cross?",
            "Where is the waterfront's sea or lagoon?",
            "Which areas would a diver jump into?",
        ),
    },
    "building": {
        "train": (
            "Where do people live or work?",
            "Which structures have roofs?",
            "Where are the houses?",
            "Which objects are buildings?",
            "Where could a family shelter indoors from the sun?",
            "Which constructions could hold offices?",
            "Where are the homes in this scene?",
            "Which parts of the image are built structures?",
            "Where could goods be stored indoors?",
            "Which rooftops are visible?",
            "Where could a hotel guest sleep?",
            "Which areas are covered by villas or towers?",
        ),
        "val": (
            "Where might residents have their flats?",
            "Which buildings can be seen from above?",
            "Where are the dwellings in this image?",
            "Which rooftops could hold solar panels?",
            "Where could workers have their offices?",
            "Which roofed structures stand in the scene?",
        ),
        "test": (
            "Where could people shelter under a roof?",
            "Which blocks house shops or apartments?",
            "Where are the built-up structures?",
            "Which objects cast the shadows of walls and roofs?",
            "Where could a tenant rent a room?",
            "Which parts of the scene are houses or towers?",
        ),
    },
    "vegetation": {
        "train": (
            "Where is the greenery?",
            "Which areas are covered by plants?",
            "Where do trees or palms grow?",
            "Which parts of the scene need irrigation to stay green?",
            "Where could you sit in the shade of a tree?",
            "Which patches are lawn or garden?",
            "Where is the park?",
            "Which areas are planted?",
            "Where would a gardener work?",
            "Which surfaces are covered with grass or shrubs?",
            "Where could birds nest in the trees?",
            "Which regions are green with vegetation?",
        ),
        "val": (
            "Where are the gardens and lawns?",
            "Which areas have growing plants?",
            "Where could a picnic be held on the grass?",
            "Which parts of the picture are landscaped with trees?",
            "Where is the green space?",
            "Which patches would a lawnmower cut?",
        ),
        "test": (
            "Where do shrubs and trees grow?",
            "Which areas look leafy from above?",
            "Where could a goat graze?",
            "Which patches are covered by foliage?",
            "Where is the planted or wild green cover?",
            "Which parts of the scene would need watering by a gardener?",
        ),
    },
    "road": {
        "train": (
            "Which surfaces do cars drive on?",
            "Where are the roads?",
            "Which paths connect the places here for vehicles?",
            "Where could a bus travel?",
            "Which strips of asphalt carry traffic?",
            "Where could a taxi drive?",
            "Which routes could a delivery truck take?",
            "Where is the street network?",
            "Which lanes are used by traffic?",
            "Where would a traffic jam form?",
            "Which paved routes have lane markings?",
            "Where do vehicles travel through the area?",
        ),
        "val": (
            "Which ways could a car follow through the scene?",
            "Where is the highway?",
            "Which paved lanes carry cars and lorries?",
            "Where would an ambulance drive?",
            "Which streets run through this picture?",
            "Where could a motorbike be ridden?",
        ),
        "test": (
            "Where could a cyclist ride on tarmac?",
            "Which routes would a school bus use?",
            "Where are the carriageways?",
            "Which asphalt strips join the neighbourhoods?",
            "Where could a car be driven across the scene?",
            "Which surfaces are marked for traffic?",
        ),
    },
}

_NOUNS = {
    "land": "Bare, unpaved land",
    "water": "Water",
    "building": "Buildings",
    "vegetation": "Vegetation",
    "road": "Roads",
}


HELDOUT_PHRASINGS = ("own", "train")


def convert_dubai(
    src: Path, out: Path, seed: int = 0, overwrite: bool = False, heldout_phrasings: str = "own"
) -> dict[str, int]:
    """Writes the Dubai tiles of ``src`` as out/{train,val,test}/{images,labels,QAs}; returns the samples per
    split.

    ``heldout_phrasings``: the pool tiles 5 and 6 are asked from, ``"own"`` (each split's unseen phrasings: the
    benchmark) or ``"train"`` (a diagnostic).

    Images are symlinked, not copied (copied only where the file system refuses symlinks). Raises DataError
    for a missing source folder, tile or partner file, a mask whose size differs from its image, a mask colour
    outside ``CLASS_COLOURS`` / ``UNLABELED_COLOURS``, or when a split folder already holds files and
    ``overwrite`` is False (with ``overwrite`` the split's images/labels/QAs folders are emptied first).
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: Dubai source folder not found (expected tile-1 .. tile-6 inside)")
    if seed < 0:
        raise DataError(f"Dubai conversion seed must be >= 0, got {seed}")
    if heldout_phrasings not in HELDOUT_PHRASINGS:
        raise DataError(
            f"Dubai held-out phrasings must be one of {', '.join(HELDOUT_PHRASINGS)}, got {heldout_phrasings!r}"
        )
    pools = {split: "train" if heldout_phrasings == "train" else split for split in SPLITS}
    if out.exists() and not out.is_dir():
        raise DataError(f"Dubai output {out} exists and is not a folder")
    pairs = {split: [p for tile in tiles for p in _tile_pairs(src, tile)] for split, tiles in SPLIT_TILES.items()}
    prepare_split_folders(out, SPLITS, overwrite)
    counts = dict.fromkeys(SPLITS, 0)
    for split, split_pairs in pairs.items():
        for tile, image_path, mask_path in split_pairs:
            class_masks = read_class_masks(mask_path, image_path)
            for concept, mask in class_masks.items():
                stem = f"tile-{tile}_{image_path.stem}_{concept}"
                _write_sample(out / split, stem, image_path, mask, concept, tile, pools[split], seed)
                counts[split] += 1
    return counts


def read_class_masks(mask_path: Path, image_path: Path) -> dict[str, np.ndarray]:
    """Class name -> bool [H,W] mask of ``mask_path``'s pixels of that class, checked against ``image_path``'s
    size and the known colours."""
    try:
        with Image.open(image_path) as image:
            image_size = image.size
        with Image.open(mask_path) as mask_image:
            rgb = np.asarray(mask_image.convert("RGB"))
    except OSError as exc:
        raise DataError(f"{mask_path}: cannot read mask or its image {image_path.name} ({exc})") from None
    if (rgb.shape[1], rgb.shape[0]) != image_size:
        raise DataError(
            f"{mask_path}: mask is {rgb.shape[1]}x{rgb.shape[0]} but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}"
        )
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    known = np.array([*CLASS_COLOURS.values(), *UNLABELED_COLOURS], dtype=np.int32)
    unknown = ~np.isin(codes, known)
    if unknown.any():
        rows, cols = np.nonzero(unknown)
        colours = np.unique(codes[unknown])
        listed = ", ".join(f"#{c:06X}" for c in colours[:5])
        if len(colours) > 5:
            listed += f" and {len(colours) - 5} more"
        raise DataError(
            f"{mask_path}: unknown mask colour {listed} at {len(rows)} pixels (first at row {rows[0]}, column "
            f"{cols[0]}); known: " + ", ".join(f"{name} #{c:06X}" for name, c in CLASS_COLOURS.items())
            + ", unlabeled " + ", ".join(f"#{c:06X}" for c in UNLABELED_COLOURS)
        )
    return {concept: codes == colour for concept, colour in CLASS_COLOURS.items()}


def _tile_pairs(src: Path, tile: int) -> list[tuple[int, Path, Path]]:
    """(tile, image, mask) for every image of ``src/tile-N``, in file-name order; every image needs its mask."""
    folder = src / f"tile-{tile}"
    images_dir, masks_dir = folder / "images", folder / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise DataError(f"{needed}: missing folder (Dubai layout is tile-N/images/*.jpg + tile-N/masks/*.png)")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")}
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    if not images:
        raise DataError(f"{images_dir}: no JPEG images")
    unpaired = sorted(images.keys() ^ masks.keys())
    if unpaired:
        stem = unpaired[0]
        missing = masks_dir / f"{stem}.png" if stem in images else images_dir / f"{stem}.jpg"
        raise DataError(f"{missing}: missing partner of {(images.get(stem) or masks[stem]).name}")
    return [(tile, images[stem], masks[stem]) for stem in sorted(images)]


def _write_sample(folder: Path, stem: str, image_path: Path, mask: np.ndarray, concept: str, tile: int,
                  pool_name: str, seed: int) -> None:
    _link_or_copy(image_path, folder / "images" / f"{stem}{image_path.suffix.lower()}")
    Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "labels" / f"{stem}.png")
    rng = np.random.default_rng([seed, zlib.crc32(stem.encode("utf-8"))])
    pool = PHRASINGS[concept][pool_name]
    qa = {
        "questions": [pool[i] for i in rng.permutation(len(pool))[:QUESTIONS_PER_SAMPLE]],
        "answer": [_answer(concept, mask)] if mask.any() else [],
        "concept": concept,
        "tile": tile,
    }
    (folder / "QAs" / f"{stem}.json").write_text(json.dumps(qa, indent=2) + "\n", encoding="utf-8")


def _link_or_copy(source: Path, link: Path) -> None:
    try:
        os.symlink(source.resolve(), link)
    except OSError:
        # e.g. Windows without the symlink privilege, or a file system without links
        shutil.copyfile(source, link)


def _answer(concept: str, mask: np.ndarray) -> str:
    """'Water, covering about 31% of the image.'"""
    percent = 100 * mask.mean()
    share = "under 1%" if percent < 1 else f"about {percent:.0f}%"
    return f"{_NOUNS[concept]}, covering {share} of the image."
