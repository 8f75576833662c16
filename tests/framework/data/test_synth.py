"""The synthetic EarthReason writer: exact layout and formats, determinism, label/answer consistency,
sample mix, relational definitions, instance maps and split-disjoint phrasings."""

import hashlib
import io
import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framework.core.errors import DataError
from framework.data import synth
from framework.data.synth import (
    CLASS_CONCEPTS,
    CONCEPTS,
    PHRASINGS,
    RELATIONAL_CONCEPTS,
    SPLITS,
    split_sizes,
    write_synthetic_dataset,
)
from framework.data.synth.targets import _choose_targets, _target
from framework.data.synth.writer import MAX_INSTANCES, _instance_map

SIZE = 128
SCENES = 100  # 300 samples: enough to pin the shares of no-target and relational questions


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    out = tmp_path_factory.mktemp("synth")
    return out, write_synthetic_dataset(out, n=SCENES, seed=3, image_size=SIZE)


def _samples(out: Path):
    """Yields (split, stem, qa, label as (S, S) uint8) for every sample written under ``out``."""
    for split in SPLITS:
        for qa_path in sorted((out / split / "QAs").iterdir()):
            label = np.asarray(Image.open(out / split / "labels" / f"{qa_path.stem}.png"))
            yield split, qa_path.stem, json.loads(qa_path.read_text(encoding="utf-8")), label


def _instance_maps(out: Path):
    """Yields (qa, label, instance ids) for every sample written under ``out``, both (S, S) uint8."""
    for split, stem, qa, label in _samples(out):
        yield qa, label, np.asarray(Image.open(out / split / "instances" / f"{stem}.png"))


def _tree(out: Path, folders: tuple[str, ...] = ("images", "labels", "instances", "QAs")) -> dict[str, bytes]:
    """Every file under ``out/<split>/<folder>`` for ``folders``, by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[1] in folders
    }


def test_layout_file_formats_and_stem_pairing(dataset):
    out, counts = dataset
    assert sorted(p.name for p in out.iterdir()) == sorted(SPLITS)
    jpeg_q95 = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg_q95, format="JPEG", quality=95)
    q95_tables = Image.open(jpeg_q95).quantization
    for split in SPLITS:
        folder = out / split
        assert sorted(p.name for p in folder.iterdir()) == ["QAs", "images", "instances", "labels"]
        subs = ("images", "labels", "instances", "QAs")
        stems = {sub: sorted(p.stem for p in (folder / sub).iterdir()) for sub in subs}
        assert stems["images"] == stems["labels"] == stems["instances"] == stems["QAs"]
        assert len(stems["images"]) == counts[split] > 0
        assert {p.suffix for p in (folder / "images").iterdir()} == {".jpg"}
        assert {p.suffix for p in (folder / "labels").iterdir()} == {".png"}
        assert {p.suffix for p in (folder / "instances").iterdir()} == {".png"}
        assert {p.suffix for p in (folder / "QAs").iterdir()} == {".json"}
        for stem in stems["images"][:6]:
            image = Image.open(folder / "images" / f"{stem}.jpg")
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (SIZE, SIZE))
            assert image.quantization == q95_tables
            label = Image.open(folder / "labels" / f"{stem}.png")
            assert (label.format, label.mode, label.size) == ("PNG", "L", (SIZE, SIZE))
            ids = Image.open(folder / "instances" / f"{stem}.png")
            assert (ids.format, ids.mode, ids.size) == ("PNG", "L", (SIZE, SIZE))
            scene, k = stem.split("_")
            assert len(scene) == 5 and scene.isdigit() and k.isdigit()
    for _, stem, qa, label in _samples(out):
        assert set(qa) == {"questions", "answer", "concept", "scene"}
        assert 3 <= len(qa["questions"]) <= 5 and len(set(qa["questions"])) == len(qa["questions"])
        assert all(isinstance(q, str) and q for q in qa["questions"])
        assert isinstance(qa["answer"], list) and len(qa["answer"]) <= 1
        assert all(isinstance(a, str) and a.endswith(".") for a in qa["answer"])
        assert qa["concept"] in CONCEPTS
        assert qa["scene"] == int(stem.split("_")[0])
        assert set(np.unique(label)) <= {0, 255}


def test_a_scenes_samples_share_its_one_image_file(dataset):
    out, _ = dataset
    images = out / "train" / "images"
    first, linked = images / "00000_0.jpg", images / "00000_1.jpg"
    assert not first.is_symlink() and linked.is_symlink() and os.readlink(linked) == "00000_0.jpg"
    assert linked.resolve() == first.resolve()


def test_scenes_split_70_15_15_without_sharing(dataset):
    out, _ = dataset
    scenes = defaultdict(set)
    for split, _, qa, _ in _samples(out):
        scenes[split].add(qa["scene"])
    assert {split: len(s) for split, s in scenes.items()} == split_sizes(SCENES) == {"train": 70, "val": 15, "test": 15}
    assert not (scenes["train"] & scenes["val"] or scenes["train"] & scenes["test"] or scenes["val"] & scenes["test"])
    assert split_sizes(3) == {"train": 1, "val": 1, "test": 1}


def test_answer_and_label_agree(dataset):
    out, _ = dataset
    for _, _, qa, label in _samples(out):
        if qa["answer"]:
            assert label.any(), qa
        else:
            assert not label.any(), qa
            assert qa["concept"] in CLASS_CONCEPTS  # only absent classes are asked without a target


def test_shares_of_no_target_and_relational_questions(dataset):
    out, _ = dataset
    samples = list(_samples(out))
    no_target = sum(not qa["answer"] for _, _, qa, _ in samples) / len(samples)
    relational = sum(qa["concept"] in RELATIONAL_CONCEPTS for _, _, qa, _ in samples) / len(samples)
    assert 0.05 <= no_target <= 0.16
    assert 0.18 <= relational <= 0.32
    assert {qa["concept"] for _, _, qa, _ in samples} == set(CONCEPTS)


def test_a_scene_is_asked_different_concepts_with_different_masks(dataset):
    out, _ = dataset
    by_scene = defaultdict(list)
    for _, _, qa, label in _samples(out):
        by_scene[qa["scene"]].append((qa["concept"], label.tobytes()))
    for samples in by_scene.values():
        concepts = [c for c, _ in samples]
        assert len(concepts) == len(set(concepts))
    varied = sum(len({m for _, m in samples}) >= 2 for samples in by_scene.values())
    assert varied >= 0.9 * len(by_scene)


def test_phrasing_pools_are_large_and_disjoint():
    assert set(PHRASINGS) == set(CONCEPTS)
    everything = []
    for concept, pools in PHRASINGS.items():
        assert set(pools) == set(SPLITS)
        assert len(pools["train"]) >= 10 and len(pools["val"]) >= 3 and len(pools["test"]) >= 3, concept
        for pool in pools.values():
            assert len(set(pool)) == len(pool)
            everything += pool
    assert len(set(everything)) == len(everything)  # disjoint across splits and across concepts


def test_questions_come_from_their_split_pool_only(dataset):
    out, _ = dataset
    asked = defaultdict(set)
    for split, _, qa, _ in _samples(out):
        assert set(qa["questions"]) <= set(PHRASINGS[qa["concept"]][split])
        asked[split] |= set(qa["questions"])
    assert not asked["train"] & (asked["val"] | asked["test"])


def test_same_arguments_write_identical_bytes_and_seed_changes_them(tmp_path):
    args = dict(n=4, image_size=64, samples_per_scene=2)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        write_synthetic_dataset(tmp_path / name, seed=seed, **args)
    first = _tree(tmp_path / "a")
    assert first == _tree(tmp_path / "b")
    other = _tree(tmp_path / "c")
    assert first["train/images/00000_0.jpg"] != other["train/images/00000_0.jpg"]


# SHA-256 over every image, label and QA file written (sorted relative paths, each followed by a NUL byte and the
# file's bytes), recorded from the generator as it was before framework/data/synth.py was split into a package: a
# change to a digest means the generated data changed, not only the code. The instance maps came later and are
# left out, so the digests also show that adding them changed no draw. The second case uses the default image
# size and samples per scene.
PINNED_OUTPUTS = [
    (dict(n=24, seed=3, image_size=96, samples_per_scene=3),
     "6baa609a14b9e67f6b5f31d0cf17fecd4ee508f06ccf882f372ed00e41f73aa5"),
    (dict(n=12, seed=0), "1e5e48e7a8c056298db81f003a0aff936a256cdb697e790586d7cb0515819885"),
]


@pytest.mark.parametrize("arguments, digest", PINNED_OUTPUTS, ids=["96px", "defaults"])
def test_output_bytes_for_a_seed_are_pinned(tmp_path, arguments, digest):
    write_synthetic_dataset(tmp_path, **arguments)
    sha = hashlib.sha256()
    for path, data in sorted(_tree(tmp_path, folders=("images", "labels", "QAs")).items()):
        sha.update(path.encode() + b"\0")
        sha.update(data)
    assert sha.hexdigest() == digest


def test_a_scene_does_not_depend_on_the_number_of_scenes(tmp_path):
    write_synthetic_dataset(tmp_path / "small", n=3, seed=2, image_size=64)
    write_synthetic_dataset(tmp_path / "large", n=6, seed=2, image_size=64)
    for name in ("images/00000_0.jpg", "labels/00000_0.png", "labels/00000_1.png", "instances/00000_1.png"):
        assert (tmp_path / "small/train" / name).read_bytes() == (tmp_path / "large/train" / name).read_bytes()


def test_refuses_to_overwrite_unless_asked(tmp_path):
    write_synthetic_dataset(tmp_path, n=6, seed=0, image_size=64)
    with pytest.raises(DataError, match="already contains files"):
        write_synthetic_dataset(tmp_path, n=3, seed=1, image_size=64)
    counts = write_synthetic_dataset(tmp_path, n=3, seed=1, image_size=64, overwrite=True)
    for split in SPLITS:
        for sub in ("images", "labels", "instances", "QAs"):
            assert len(list((tmp_path / split / sub).iterdir())) == counts[split]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=2), "at least 3 scenes"),
        (dict(seed=-1), "seed"),
        (dict(image_size=32), "image size"),
        (dict(samples_per_scene=0), "samples per scene"),
    ],
)
def test_rejects_arguments_that_cannot_make_a_dataset(tmp_path, kwargs, message):
    arguments = dict(n=3, seed=0, image_size=64) | kwargs
    with pytest.raises(DataError, match=message):
        write_synthetic_dataset(tmp_path, **arguments)


def _box(size: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_relational_concepts_follow_their_definitions():
    size = 100
    instance = synth._Instance
    road_rows = np.full(size, 50.0)  # the main road runs along row 50
    fields = [_box(size, 0, 0, 30, 30), _box(size, 40, 10, 60, 30), _box(size, 10, 70, 30, 90)]
    instances = {concept: [] for concept in CLASS_CONCEPTS}
    instances["field"] = [instance(m, "field") for m in fields]
    instances["water"] = [instance(_box(size, 80, 0, 100, 100), "lake")]
    near, far = _box(size, 65, 40, 72, 48), _box(size, 40, 60, 50, 68)  # 8 and 30 px from the water
    instances["building"] = [instance(far, "building"), instance(near, "building")]
    targets = {t.concept: t for t in synth._relational_targets(instances, road_rows, size)}
    assert set(targets) == set(RELATIONAL_CONCEPTS)
    assert (targets["largest_field"].mask == fields[0]).all()
    assert (targets["building_nearest_water"].mask == near).all()
    assert (targets["field_north_of_road"].mask == (fields[0] | fields[1])).all()
    assert targets["field_north_of_road"].answer.startswith("The two fields above the main road")

    # Ambiguous cases are not asked: equal-sized fields, buildings equally near the water, no field south.
    instances["field"] = [instance(fields[0], "field"), instance(_box(size, 40, 0, 70, 30), "field")]
    instances["building"] = [instance(near, "building"), instance(_box(size, 65, 60, 72, 68), "building")]
    assert synth._relational_targets(instances, road_rows, size) == []


def test_instance_ids_are_1_to_n_and_cover_exactly_the_label(dataset):
    out, _ = dataset
    counts = defaultdict(set)
    for qa, label, ids in _instance_maps(out):
        np.testing.assert_array_equal(ids > 0, label > 0)
        present = np.unique(ids[ids > 0])
        assert present.tolist() == list(range(1, len(present) + 1)), qa
        if not qa["answer"]:
            assert not ids.any()  # an absent concept has no instance
        counts[qa["concept"]].add(len(present))
    assert counts["largest_field"] == counts["building_nearest_water"] == {1}
    assert max(counts["building"]) > 1 and max(counts["field"]) > 1 and max(counts["field_north_of_road"]) > 1


def test_class_level_targets_have_one_id_per_visible_instance():
    for scene in range(12):
        rng = np.random.default_rng([3, scene])
        builder = synth._SceneBuilder(rng, SIZE)
        _, instances = builder.build()
        for target in _choose_targets(rng, instances, builder.main_road_rows, SIZE, len(CLASS_CONCEPTS)):
            ids = _instance_map(target, "scene")
            np.testing.assert_array_equal(ids > 0, target.mask)
            if target.concept in CLASS_CONCEPTS:  # ids are 1..n (above): n is the number of visible instances
                assert ids.max() == len(instances[target.concept]) == len(target.instances)


def test_relational_targets_have_their_instances():
    size = 100
    instance = synth._Instance
    fields = [_box(size, 0, 0, 30, 30), _box(size, 40, 10, 60, 30), _box(size, 10, 70, 30, 90)]
    instances = {concept: [] for concept in CLASS_CONCEPTS}
    instances["field"] = [instance(m, "field") for m in fields]
    targets = {t.concept: t for t in synth._relational_targets(instances, np.full(size, 50.0), size)}
    north = _instance_map(targets["field_north_of_road"], "north")
    assert north[fields[0]].tolist() == [1] * 900 and north[fields[1]].tolist() == [2] * 400  # by decreasing area
    assert not north[fields[2]].any() and north.max() == 2
    largest = _instance_map(targets["largest_field"], "largest")
    np.testing.assert_array_equal(largest, fields[0].astype(np.uint8))


def test_overlapping_instances_keep_their_ids_and_their_union():
    size = 20
    long, short = _box(size, 0, 8, 20, 12), _box(size, 8, 0, 12, 15)  # two roads crossing at rows/columns 8-11
    ids = _instance_map(_target("road", [short, long], "roads", size), "crossing")
    np.testing.assert_array_equal(ids > 0, long | short)
    assert ids[10, 2] == 1 and ids[2, 10] == 2  # ordered by area, not by the list
    assert (ids[8:12, 8:12] == 2).all()  # the smaller one wins the crossing
    hidden = _box(size, 2, 2, 6, 6)
    covered = _instance_map(_target("road", [hidden, _box(size, 0, 0, 10, 10), hidden], "x", size), "covered")
    assert np.unique(covered).tolist() == [0, 1, 2]  # an instance without a pixel left gets no id


def test_more_instances_than_an_8_bit_map_holds_is_a_data_error():
    size = 16
    pixels = []
    for k in range(MAX_INSTANCES + 1):
        mask = np.zeros((size, size), dtype=bool)
        mask.flat[k] = True
        pixels.append(mask)
    with pytest.raises(DataError, match=f"here.png: 256 target instances, an 8-bit instance map holds {MAX_INSTANCES}"):
        _instance_map(_target("building", pixels, "many", size), "here.png")
