"""The Dubai converter: real tiles to EarthReason layout (split by tile, symlinked images, labels equal to the
measured class colours, split-disjoint phrasings, kept no-target samples and their floors), determinism, and
the errors on bad input (small fake tiles written here)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from framework.cli.main import main
from framework.core.errors import DataError
from framework.data import dubai
from framework.data.dubai import (
    CLASS_COLOURS,
    CLASSES,
    PHRASINGS,
    QUESTIONS_PER_SAMPLE,
    SPLIT_TILES,
    SPLITS,
    convert_dubai,
)
from framework.data.earthreason import EarthReasonDataset
from tests.conftest import SHARED_DATA

DUBAI = SHARED_DATA / "dubai-aerial"
IMAGES_PER_TILE = 9


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    if not DUBAI.is_dir():
        pytest.skip(f"the Dubai tiles are not at {DUBAI}")
    out = tmp_path_factory.mktemp("dubai")
    return out, convert_dubai(DUBAI, out, seed=0)


def _qas(out: Path, split: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((out / split / "QAs").iterdir())}


def _label(out: Path, split: str, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / split / "labels" / f"{stem}.png"))


def test_counts_one_sample_per_image_and_class_split_by_tile(converted):
    out, counts = converted
    per_tile = IMAGES_PER_TILE * len(CLASSES)
    assert counts == {"train": 4 * per_tile, "val": per_tile, "test": per_tile}
    assert SPLIT_TILES == {"train": (1, 2, 3, 4), "val": (5,), "test": (6,)}
    for split, tiles in (("train", {1, 2, 3, 4}), ("val", {5}), ("test", {6})):
        qas = _qas(out, split)
        assert len(qas) == counts[split]
        assert {qa["tile"] for qa in qas.values()} == tiles
        assert {stem.split("_")[0] for stem in qas} == {f"tile-{t}" for t in tiles}
        assert {qa["concept"] for qa in qas.values()} == set(CLASSES)
        for sub in ("images", "labels"):
            assert sorted(p.stem for p in (out / split / sub).iterdir()) == sorted(qas)


def test_images_are_symlinks_to_the_source_jpegs(converted):
    out, _ = converted
    for split in SPLITS:
        for link in (out / split / "images").iterdir():
            assert link.is_symlink(), link
            tile, rest = link.stem.split("_", 1)
            image_stem = rest.rsplit("_", 1)[0]
            assert link.resolve() == (DUBAI / tile / "images" / f"{image_stem}.jpg").resolve()
    copied = sum(p.stat().st_size for p in out.rglob("*.jpg") if not p.is_symlink())
    assert copied == 0


def test_class_colours_are_the_ones_measured_in_the_readme():
    readme = DUBAI / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    rows = re.findall(r"^\| (\w+)[^|]*\| #([0-9A-F]{6}) \|", text, re.M)
    if not rows:
        pytest.skip(f"no README colour table at {DUBAI}")
    measured = {name: int(hex_, 16) for name, hex_ in rows}
    assert {name: measured[name] for name in CLASSES} == CLASS_COLOURS
    assert measured["unlabeled"] in dubai.UNLABELED_COLOURS


def test_labels_are_binary_and_equal_the_class_pixels_of_the_source_mask(converted):
    out, _ = converted
    for split in SPLITS:
        for image_stem in {stem.rsplit("_", 1)[0] for stem in _qas(out, split)}:
            tile, part = image_stem.split("_", 1)
            rgb = np.asarray(Image.open(DUBAI / tile / "masks" / f"{part}.png").convert("RGB")).astype(np.int32)
            code = rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]
            for concept in CLASSES:
                label = _label(out, split, f"{image_stem}_{concept}")
                assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 255}
                np.testing.assert_array_equal(label == 255, code == CLASS_COLOURS[concept])


def test_no_target_samples_have_empty_labels_and_empty_answers(converted):
    out, _ = converted
    empty = 0
    for split in SPLITS:
        for stem, qa in _qas(out, split).items():
            has_target = bool(_label(out, split, stem).any())
            assert bool(qa["answer"]) == has_target, stem
            empty += not has_target
            if has_target:
                assert len(qa["answer"]) == 1 and qa["answer"][0].endswith("of the image.")
    assert empty > 0


@pytest.mark.parametrize("split, no_target, whole_image", [("val", 8, 0.1995), ("test", 13, 0.1994)])
def test_floors_of_the_held_out_tiles(converted, split, no_target, whole_image):
    """Always-empty gIoU = share of no-target samples; whole-image gIoU = mean class share (0 when absent):
    8 of the 45 tile-5 samples are no-target (4 building, 3 vegetation, 1 road), 13 of the 45 tile-6 samples (7
    building, 6 road)."""
    out, _ = converted
    labels = [_label(out, split, stem) > 0 for stem in _qas(out, split)]
    always_empty = np.mean([0.0 if label.any() else 1.0 for label in labels])
    assert always_empty == pytest.approx(no_target / 45)
    assert np.mean([label.mean() for label in labels]) == pytest.approx(whole_image, abs=5e-4)


def test_phrasing_pools_are_disjoint_and_each_split_asks_from_its_own(converted):
    out, _ = converted
    for concept, pools in PHRASINGS.items():
        assert set(pools) == set(SPLITS)
        assert len(pools["train"]) >= 2 * QUESTIONS_PER_SAMPLE
        assert len(pools["val"]) >= QUESTIONS_PER_SAMPLE and len(pools["test"]) >= QUESTIONS_PER_SAMPLE
    all_questions = [q for pools in PHRASINGS.values() for pool in pools.values() for q in pool]
    assert len(all_questions) == len(set(all_questions))
    asked = {}
    for split in SPLITS:
        for qa in _qas(out, split).values():
            assert len(qa["questions"]) == len(set(qa["questions"])) == QUESTIONS_PER_SAMPLE
            assert set(qa["questions"]) <= set(PHRASINGS[qa["concept"]][split])
            asked.setdefault(split, set()).update(qa["questions"])
    assert not asked["train"] & asked["val"] and not asked["train"] & asked["test"]
    assert not asked["val"] & asked["test"]


def test_earthreason_reader_loads_the_output(converted):
    out, counts = converted
    train = EarthReasonDataset(str(out), "train", image_size=32, questions="all")
    assert len(train) == counts["train"] * QUESTIONS_PER_SAMPLE
    test = EarthReasonDataset(str(out), "test", image_size=32, questions="first")
    assert len(test) == counts["test"]
    assert sum(not s.has_target for s in test.samples) == 13


# ------------------------------------------------------------------------------------------- fake tiles

_COLOURS = np.array([[(c >> 16) & 255, (c >> 8) & 255, c & 255] for c in CLASS_COLOURS.values()], dtype=np.uint8)


def _fake_tiles(root: Path, height: int = 6, width: int = 8) -> Path:
    """tile-1..6 with one image each; every mask uses land, water and #9B9B9B, no building/vegetation/road."""
    for tile in range(1, 7):
        for sub in ("images", "masks"):
            (root / f"tile-{tile}" / sub).mkdir(parents=True)
        Image.new("RGB", (width, height), (tile * 30, 90, 60)).save(root / f"tile-{tile}/images/image_part_001.jpg")
        mask = np.empty((height, width, 3), dtype=np.uint8)
        mask[:] = _COLOURS[0]
        mask[: height // 2] = _COLOURS[1]
        mask[0, 0] = (0x9B, 0x9B, 0x9B)
        Image.fromarray(mask).save(root / f"tile-{tile}/masks/image_part_001.png")
    return root


def test_fake_tiles_convert_with_absent_classes_and_unlabeled_pixels_as_background(tmp_path):
    out = tmp_path / "out"
    assert convert_dubai(_fake_tiles(tmp_path / "src"), out) == {"train": 20, "val": 5, "test": 5}
    water = np.zeros((6, 8), dtype=np.uint8)
    water[:3] = 255
    water[0, 0] = 0  # unlabeled: no class's target
    np.testing.assert_array_equal(_label(out, "test", "tile-6_image_part_001_water"), water)
    land = np.zeros((6, 8), dtype=np.uint8)
    land[3:] = 255
    np.testing.assert_array_equal(_label(out, "test", "tile-6_image_part_001_land"), land)
    assert _qas(out, "test")["tile-6_image_part_001_road"]["answer"] == []
    assert _qas(out, "val")["tile-5_image_part_001_building"]["answer"] == []


def test_same_seed_writes_identical_files_and_another_seed_other_questions(tmp_path):
    src = _fake_tiles(tmp_path / "src")
    outs = [tmp_path / name for name in ("a", "b", "c")]
    for out, seed in zip(outs, (4, 4, 5)):
        convert_dubai(src, out, seed=seed)

    def contents(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    assert contents(outs[0]) == contents(outs[1])
    assert _qas(outs[0], "train") != _qas(outs[2], "train")


@pytest.mark.parametrize("split", ["val", "test"])
def test_heldout_phrasings_train_asks_tiles_5_and_6_from_the_training_pool_and_changes_nothing_else(tmp_path, split):
    src = _fake_tiles(tmp_path / "src")
    convert_dubai(src, tmp_path / "unseen", seed=2)
    assert main(["data", "dubai", "--src", str(src), "--out", str(tmp_path / "seen"), "--seed", "2",
                 "--heldout-phrasings", "train"]) == 0
    unseen, seen = _qas(tmp_path / "unseen", split), _qas(tmp_path / "seen", split)
    assert unseen.keys() == seen.keys()
    for stem, qa in seen.items():
        assert set(qa["questions"]) <= set(PHRASINGS[qa["concept"]]["train"])
        assert set(unseen[stem]["questions"]) <= set(PHRASINGS[qa["concept"]][split])
        assert {k: v for k, v in qa.items() if k != "questions"} == {k: v for k, v in unseen[stem].items() if k != "questions"}
        np.testing.assert_array_equal(_label(tmp_path / "seen", split, stem), _label(tmp_path / "unseen", split, stem))
    assert _qas(tmp_path / "seen", "train") == _qas(tmp_path / "unseen", "train")
    with pytest.raises(DataError, match="held-out phrasings must be one of own, train, got 'val'"):
        convert_dubai(src, tmp_path / "other", heldout_phrasings="val")


def test_copies_images_where_symlinks_fail(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("symlinks not supported here")

    monkeypatch.setattr(dubai.os, "symlink", refuse)
    src = _fake_tiles(tmp_path / "src")
    convert_dubai(src, tmp_path / "out")
    copy = tmp_path / "out" / "test" / "images" / "tile-6_image_part_001_land.jpg"
    assert not copy.is_symlink()
    assert copy.read_bytes() == (src / "tile-6" / "images" / "image_part_001.jpg").read_bytes()


def test_refuses_to_overwrite_unless_asked(tmp_path):
    src, out = _fake_tiles(tmp_path / "src"), tmp_path / "out"
    convert_dubai(src, out)
    (out / "val" / "QAs" / "stale.json").write_text("{}")
    with pytest.raises(DataError, match="already contains files"):
        convert_dubai(src, out)
    assert convert_dubai(src, out, overwrite=True) == {"train": 20, "val": 5, "test": 5}
    assert not (out / "val" / "QAs" / "stale.json").exists()


def _narrower_mask(src: Path) -> Path:
    path = src / "tile-3" / "masks" / "image_part_001.png"
    Image.fromarray(np.asarray(Image.open(path))[:, :-1]).save(path)
    return path


def _unknown_colour(src: Path) -> Path:
    path = src / "tile-3" / "masks" / "image_part_001.png"
    mask = np.asarray(Image.open(path)).copy()
    mask[2, 5] = (0x12, 0x34, 0x56)
    Image.fromarray(mask).save(path)
    return path


def _image_without_mask(src: Path) -> Path:
    path = src / "tile-3" / "masks" / "image_part_001.png"
    path.unlink()
    return path


def _missing_tile(src: Path) -> Path:
    shutil.rmtree(src / "tile-6")
    return src / "tile-6"


@pytest.mark.parametrize(
    "breakage, message",
    [
        (_narrower_mask, r"mask is 7x6 but its image .* is 8x6"),
        (_unknown_colour, r"unknown mask colour #123456 at 1 pixels \(first at row 2, column 5\)"),
        (_image_without_mask, r"missing partner of image_part_001.jpg"),
        (_missing_tile, r"missing folder"),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_bad_input_raises_data_error_naming_the_file(tmp_path, breakage, message):
    src = _fake_tiles(tmp_path / "src")
    culprit = breakage(src)
    with pytest.raises(DataError, match=message) as error:
        convert_dubai(src, tmp_path / "out")
    assert str(culprit) in str(error.value)


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataError, match="Dubai source folder not found"):
        convert_dubai(tmp_path / "nowhere", tmp_path / "out")


def test_cli_converts_and_reports_errors_in_one_line(tmp_path, capsys):
    src = _fake_tiles(tmp_path / "src")
    assert main(["data", "dubai", "--src", str(src), "--out", str(tmp_path / "out"), "--seed", "2"]) == 0
    assert "train 20 samples, val 5 samples, test 5 samples" in capsys.readouterr().out
    assert main(["data", "dubai", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_experiments_train_on_tiles_1_to_4_validate_on_5_and_test_on_6():
    from framework.core.config import load_config

    experiments = Path(__file__).resolve().parents[3] / "experiments"
    demo = load_config(experiments / "demo.yaml", validate_components=False)["model"]
    open_cfg = load_config(experiments / "dubai" / "dubai.yaml", validate_components=False)
    closed = load_config(experiments / "dubai" / "closed_set.yaml", validate_components=False)
    for cfg in (open_cfg, closed):
        assert (cfg["data"]["root"], cfg["data"]["val_split"], cfg["data"]["test_split"]) == ("data/dubai", "val", "test")
        assert cfg["data"]["batch_size"] % cfg["data"]["questions_per_image"] == 0
        # the demo's pretrained encoder (frozen) and LLM weights; a trained projector and per-pixel head
        assert cfg["model"]["encoder"] == {**demo["encoder"], "frozen": True}
        assert (cfg["model"]["llm"]["package"], cfg["model"]["llm"]["gguf_file"]) == (demo["llm"]["package"], demo["llm"]["gguf_file"])
        assert cfg["model"]["mask_head"] == {"name": "linear", "dim": 96, "query_dim": 128, "pixel_norm": True}
        assert {k: v for k, v in cfg.items() if k not in ("name", "model", "loss", "trainer")} == {
            k: v for k, v in open_cfg.items() if k not in ("name", "model", "loss", "trainer")}
    # the headline is open: no class list anywhere, the image's visual tokens and the question through a LoRA LLM
    assert open_cfg["model"].get("readout", {"name": "query"})["name"] == "query"
    assert open_cfg["model"]["compressor"]["name"] == "conv_stride" and "<image>" in open_cfg["model"]["llm"]["template"]
    assert open_cfg["model"]["llm"]["lora"] and not open_cfg["model"]["llm"]["frozen"]
    assert open_cfg["loss"]["competition_weight"] > 0  # the image's questions compete, not a fixed class list
    # the baseline is closed: a frozen text-only LLM routing to one concept per class the converter writes
    assert closed["model"]["compressor"] is None and closed["model"]["llm"]["frozen"]
    assert closed["model"]["readout"]["name"] == "concept_choice"
    assert sorted(closed["model"]["readout"]["concepts"]) == sorted(CLASSES)
    assert closed["loss"]["competition_weight"] == 0
