"""Inference API and ``segearth predict``: native-size masks, one encoder pass per image, georeferenced outputs,
large scenes in tiles, and clear errors (exit 2, nothing written) for bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage
from shapely.geometry import box, shape

from framework.cli.main import main
from framework.core.errors import DataError
from framework.core.model import SegEarthModel
from framework.core.slot_clock import SlotClock
from framework.data.geo import GeoReference
from framework.data.transforms import letterbox_image
from framework.eval.overlays import palette_rgb
from framework.eval.postprocess import unletterbox_probabilities
from framework.infer.outputs import write_sample
from framework.infer.predictor import LoadedImage, PredictedTarget, Prediction, Predictor, load_model
from tests.framework.infer.test_bundle import tiny_experiment, write_checkpoint
from tests.tiny import TINY_IMAGE_PATH, count_rows

QUESTIONS = ["Where could a seaplane land?", "Which areas are paved?", "Where do trees grow?"]
UTM = CRS.from_epsg(32640)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("predict")
    _, cfg = tiny_experiment(folder)
    return write_checkpoint(cfg, folder / "tiny.ckpt")


@pytest.fixture(scope="module")
def model(ckpt) -> Predictor:
    return load_model(ckpt)


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def write_geotiff(path: Path, pixels: np.ndarray, crs=UTM, transform=from_origin(300000, 2780000, 0.5, 0.5)) -> Path:
    height, width = pixels.shape[:2]
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8",
               "transform": transform}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
    return path


def test_prediction_is_the_evaluators_native_resolution_output(model):
    """An image no larger than the training frame is one tile: letterboxed as in training; the probability map
    is the sigmoid of the logits resampled to the native grid (``unletterbox``), so mask == probability > 0.5."""
    pixels = scene(50, 64)
    result = model.predict(pixels, QUESTIONS[0])
    assert result.mask.shape == result.probability.shape == (50, 64) and result.mask.dtype == bool
    frame, letterbox = letterbox_image(Image.fromarray(pixels), model.image_size)
    with torch.no_grad():
        logits = model.model(frame[None], [QUESTIONS[0]]).mask_logits
    want = unletterbox_probabilities(logits, [letterbox], [(50, 64)], model.image_size)[0].numpy()
    np.testing.assert_allclose(result.probability, want, rtol=0, atol=1e-6)
    assert np.array_equal(result.mask, want > 0.5)
    assert result.area_px == int(result.mask.sum()) and result.area_m2 is None and result.answer is None
    expected_score = float(want[want > 0.5].mean()) if result.area_px else 0.0
    assert result.score == pytest.approx(expected_score, abs=1e-6) and result.tiles == 1


def test_the_encoder_runs_once_per_image_whatever_the_number_of_questions(model):
    calls = []
    hook = model.model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        images = [scene(64, 64, 1), scene(48, 64, 2)]
        many = model.predict_many([(images[0], q) for q in QUESTIONS] + [(images[1], q) for q in QUESTIONS])
    finally:
        hook.remove()
    assert calls == [2]  # both images' frames in one encoder batch, 6 questions answered from the cache
    assert [p.question for p in many] == QUESTIONS * 2
    alone = model.predict(images[1], QUESTIONS[2])
    np.testing.assert_allclose(many[5].probability, alone.probability, rtol=0, atol=1e-5)


def test_the_image_only_slots_run_once_per_image_for_all_its_questions(tmp_path):
    """4 images x 5 questions through ``Predictor``: the encoder, the compressor and the head's pixel decoder see
    4 rows (one tile batch), the LLM, the projector and the head's decoder 20 (in batches of 8)."""
    _, cfg = tiny_experiment(tmp_path)
    cfg["model"].update(TINY_IMAGE_PATH)
    torch.manual_seed(0)
    predictor = Predictor(SegEarthModel(cfg["model"]), cfg, batch_size=8)
    rows = count_rows(predictor.model)
    images = [scene(64, 64, seed) for seed in range(4)]
    questions = [f"Where could thing {q} be?" for q in range(5)]
    predictor.predict_many([(image, q) for image in images for q in questions])
    assert rows == {"encoder": [4], "compressor": [4], "pixel decoder": [4],
                    "llm": [8, 8, 4], "projector": [8, 8, 4], "transformer decoder": [8, 8, 4]}


@pytest.fixture(scope="module")
def image_path_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of the tiny faithful data path: visual tokens in the prompt, a Mask2Former head."""
    folder = tmp_path_factory.mktemp("image_path")
    _, cfg = tiny_experiment(folder)
    cfg["model"].update(TINY_IMAGE_PATH)
    return write_checkpoint(cfg, folder / "image_path.ckpt")


@pytest.mark.parametrize(("side", "questions", "tiles", "encoder_rows"), [(64, 1, 1, [1]), (64, 16, 1, [1]),
                                                                        (150, 16, 9, [4, 4, 1])])
def test_predict_profile_counts_the_image_parts_once_per_tile_for_all_questions(
    image_path_ckpt, tmp_path, side, questions, tiles, encoder_rows
):
    """``segearth predict --profile``: the encoder, the compressor and the pixel decoder see every tile once (4 tiles
    a batch), whatever the number of questions; the LLM, the projector and the mask decoder every (tile, question)
    pair, 16 a batch; the seconds of each part are inside the predict seconds."""
    image = tmp_path / "scene.png"
    Image.fromarray(scene(side, side)).save(image)
    asked = [arg for q in range(questions) for arg in ("--question", f"Where could thing {q} be?")]
    out = tmp_path / "out"
    assert main(["predict", "--model", str(image_path_ckpt), "--image", str(image), *asked, "--out", str(out),
                 "--tile-size", "64", "--tile-batch", "4", "--batch-size", "16", "--no-progress", "--profile"]) == 0
    profile = json.loads((out / "profile.json").read_text())
    assert (profile["images"], profile["tiles"], profile["questions"]) == (1, tiles, questions)
    parts = profile["parts"]
    assert list(parts) == ["encoder", "compressor", "pixel decoder", "llm", "projector", "mask decoder"]
    for name in ("encoder", "compressor", "pixel decoder"):
        assert parts[name]["rows_per_call"] == encoder_rows
    for name in ("llm", "projector", "mask decoder"):
        assert parts[name]["rows"] == tiles * questions and max(parts[name]["rows_per_call"]) <= 16
    assert profile["load_s"] > 0 and profile["write_s"] > 0
    assert 0 < sum(part["seconds"] for part in parts.values()) < profile["predict_s"]


def test_a_model_trained_to_answer_in_words_says_its_answer_and_others_say_why_not(tmp_path, capsys):
    """With an answer template and ``loss.lm_weight`` > 0 each prediction carries the LLM's answer text: from the
    image's own pass for a one-tile image, from the whole scene letterboxed into one frame for a tiled one; a model
    without says why its answers are null."""
    _, cfg = tiny_experiment(tmp_path, answer_template=" Sure: <answer>[SEG].<eos>")
    cfg["model"].update({"compressor": TINY_IMAGE_PATH["compressor"],
                         "llm": {**cfg["model"]["llm"], "template": TINY_IMAGE_PATH["llm"]["template"]}})
    ckpt = write_checkpoint(cfg, tmp_path / "answers.ckpt")
    predictor = load_model(ckpt, tile_size=64, answer_tokens=6)
    assert predictor.answer_note is None
    small, large = scene(64, 64), scene(150, 150)
    questions = ["Where is the lake?", "Where is the road?"]
    one = predictor.predict(small, questions)
    with SlotClock() as clock:
        tiled = predictor.predict(large, questions)
    assert tiled[0].tiles == 9
    # the 9 tiles 4 at a time, then the whole scene once for the answers: said once per question
    assert clock.rows()["encoder"] == [4, 4, 1, 1] and clock.rows()["answer text"] == [2]
    with torch.inference_mode():
        for pixels, predictions in ((small, one), (large, tiled)):
            frame, _ = letterbox_image(Image.fromarray(pixels), predictor.image_size)
            said = predictor.model.answer_texts(predictor.model.see(frame[None]), questions, torch.zeros(2).long(), 6)
            assert [p.answer for p in predictions] == said and all(isinstance(text, str) for text in said)

    out = tmp_path / "out"
    image = tmp_path / "small.png"
    Image.fromarray(small).save(image)
    assert main(["predict", "--model", str(ckpt), "--image", str(image), "--question", questions[0], "--out",
                 str(out), "--no-progress"]) == 0
    assert json.loads((out / "predictions.jsonl").read_text())["answer"] is not None
    assert main(["predict", "--model", str(ckpt), "--image", str(image), "--question", questions[0], "--out",
                 str(out), "--no-progress", "--answer-tokens", "0"]) == 0
    assert json.loads((out / "predictions.jsonl").read_text())["answer"] is None
    assert "predict.answer_tokens is 0: answers are null" in capsys.readouterr().err

    cfg["loss"]["lm_weight"] = 0.0
    silent = Predictor(SegEarthModel(cfg["model"]), cfg)
    assert silent.answer_note == "this model was not trained to answer in words (loss.lm_weight is 0): answers are null"
    assert silent.predict(small, questions[0]).answer is None


def test_georeferenced_area_in_square_metres(model, tmp_path):
    path = write_geotiff(tmp_path / "s.tif", scene(64, 96))
    result = model.predict(str(path), QUESTIONS[1])
    assert result.image.geo.crs == UTM
    assert result.area_m2 == pytest.approx(result.area_px * 0.25)
    assert result.record()["crs"] == "EPSG:32640"


@pytest.mark.slow
def test_a_6000px_geotiff_scene_is_predicted_in_blended_tiles(ckpt, tmp_path, capsys):
    """6000 x 6000 GeoTIFF, 2048-px tiles with 25 % overlap: 16 tiles, 4 at a time; the mask GeoTIFF keeps the
    scene's grid and CRS, and the GeoJSON polygons lie on the mask's pixels."""
    pixels = np.zeros((6000, 6000, 3), np.uint8)
    pixels[:, :, 1] = np.linspace(0, 255, 6000, dtype=np.uint8)[None, :]
    transform = from_origin(400000, 2790000, 0.3, 0.3)
    image = write_geotiff(tmp_path / "big.tif", pixels, transform=transform)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(ckpt), "--image", str(image), "--question", QUESTIONS[0], "--out",
                 str(out), "--tiling", "always", "--tile-size", "2048", "--tile-batch", "4", "--no-progress"]) == 0
    row = json.loads((out / "predictions.jsonl").read_text())
    assert row["tiles"] == 16 and (row["height"], row["width"]) == (6000, 6000) and row["crs"] == "EPSG:32640"
    with rasterio.open(out / row["mask_geotiff"]) as src:
        assert src.crs == UTM and src.transform == transform and src.shape == (6000, 6000)
        mask = src.read(1).astype(bool)
    assert mask.sum() == row["area_px"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / row["mask"])) > 0, mask)
    features = json.loads((out / row["geojson"]).read_text())["features"]
    assert sum(f["properties"]["area_px"] for f in features) == row["area_px"]
    if row["no_target"]:  # the answer is empty: one feature that says so, without geometry
        assert [(f["geometry"], f["properties"]["no_target"]) for f in features] == [(None, True)]
    else:
        polygon = shape(features[0]["geometry"])
        assert box(*rasterio.transform.array_bounds(6000, 6000, transform)).covers(polygon)
        with rasterio.open(out / row["mask_geotiff"]) as src:  # a point inside the polygon is a mask pixel
            inside = polygon.representative_point()
            r, c = src.index(inside.x, inside.y)
            assert mask[r, c]
    assert Image.open(out / row["overlay"]).width == 2048  # overlay downscaled, masks full size


def test_cli_batch_from_a_manifest(ckpt, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(scene(64, 64)).save(images / "a.png")
    write_geotiff(images / "b.tif", scene(64, 80), crs=None)
    (tmp_path / "m.csv").write_text(
        "image,question\nimgs/a.png,Where could a seaplane land?\nimgs/b.tif,Which areas are paved?\n"
        "imgs/a.png,Where do trees grow?\n"
    )
    out = tmp_path / "out"
    assert main(["predict", "--model", str(ckpt), "--input", str(tmp_path / "m.csv"), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [QUESTIONS[0], QUESTIONS[1], QUESTIONS[2]]
    assert all((out / r["mask"]).is_file() and (out / r["overlay"]).is_file() for r in rows)
    assert "geojson" not in rows[0] and rows[1]["crs"] == "no CRS"
    # folder + questions file: every question of every image
    (tmp_path / "q.txt").write_text("Where could a seaplane land?\n\nWhich areas are paved?\n")
    assert main(["predict", "--model", str(ckpt), "--input", str(images), "--questions", str(tmp_path / "q.txt"),
                 "--out", str(tmp_path / "out2")]) == 0
    assert len((tmp_path / "out2" / "predictions.jsonl").read_text().splitlines()) == 4


def test_geotiff_without_crs_works_writes_no_crs_and_says_so(ckpt, tmp_path, capsys):
    image = write_geotiff(tmp_path / "nocrs.tif", scene(64, 64), crs=None)
    out = tmp_path / "out"
    args = ["predict", "--model", str(ckpt), "--image", str(image), "--question", "Where?", "--out", str(out)]
    assert main(args) == 0
    assert "has a transform but no CRS" in capsys.readouterr().err
    row = json.loads((out / "predictions.jsonl").read_text())
    with rasterio.open(out / row["mask_geotiff"]) as src:
        assert src.crs is None and src.transform == from_origin(300000, 2780000, 0.5, 0.5)
    assert "crs" not in json.loads((out / row["geojson"]).read_text())


def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    Image.fromarray(scene(64, 64)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(scene(20, 300)).save(tmp_path / "thin.png")
    (tmp_path / "m.csv").write_text("image,question\nok.png,Where?\nbroken.png,Where?\n")
    ok = ["--image", str(tmp_path / "ok.png")]
    return {
        "unreadable": (["--image", str(tmp_path / "broken.png"), "--question", "Where?"], "broken.png: unreadable"),
        "unreadable after a good one": (["--input", str(tmp_path / "m.csv")], "broken.png: unreadable"),
        "missing": (["--image", str(tmp_path / "none.png"), "--question", "Where?"], "none.png: image not found"),
        "too small": (["--image", str(tmp_path / "thin.png"), "--question", "Where?"], "300x20 pixels is too small"),
        "empty question": ([*ok, "--question", "  "], "empty question"),
        "question too long": ([*ok, "--question", "Where " * 100], "the LLM's context is 512"),
    }


@pytest.mark.parametrize("case", ["unreadable", "unreadable after a good one", "missing", "too small",
                                  "empty question", "question too long"])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(ckpt, tmp_path, capsys, case):
    args, message = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    assert main(["predict", "--model", str(ckpt), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segearth: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_help(capsys):
    for command in (["predict", "--help"], ["export", "--help"], ["convert", "segearth-r1", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 0
    assert "--tile-size" in capsys.readouterr().out


def test_a_model_that_does_not_exist(tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "nope"), "--image", "x.png", "--question", "q", "--out",
                 str(tmp_path / "out")]) == 2
    assert "nope: no such model" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_api_errors_are_data_errors(model):
    import framework

    assert framework.load_model is load_model  # `from framework import load_model`
    with pytest.raises(DataError, match="empty question"):
        model.predict(scene(64, 64), "")
    with pytest.raises(DataError, match="too small"):
        model.predict(scene(16, 16), "Where?")


def test_predictor_from_a_model_and_config(tmp_path):
    """``Predictor`` wraps any built model; the predict section of the config sets the tiling."""
    _, cfg = tiny_experiment(tmp_path)
    cfg["predict"] = {**cfg["predict"], "tiling": "always", "tile_size": 64, "overlap": 0.5}
    predictor = Predictor(SegEarthModel(cfg["model"]), cfg)
    assert predictor.predict(scene(100, 150), "Where?").tiles == 3 * 4  # overlap >= 32 px: 0, 18, 36 x 0, 29, 57, 86


def test_a_second_predict_into_the_same_out_replaces_the_first_whole(ckpt, tmp_path):
    """Three samples, then one: the folder holds exactly the second run's files, never a mix of both."""
    Image.fromarray(scene(64, 64)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    base = ["predict", "--model", str(ckpt), "--image", str(tmp_path / "a.png"), "--out", str(out)]
    assert main([*base, "--question", QUESTIONS[0], "--question", QUESTIONS[1], "--question", QUESTIONS[2]]) == 0
    assert len(list(out.glob("*_mask.png"))) == 3
    assert main([*base, "--question", QUESTIONS[1]]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [QUESTIONS[1]]
    assert sorted(p.name for p in out.iterdir()) == sorted(["predictions.jsonl", rows[0]["mask"], rows[0]["overlay"], rows[0]["targets_mask"]])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging, aside or lock left


def test_out_holding_other_files_or_being_written_is_refused(ckpt, tmp_path, capsys):
    import fcntl

    Image.fromarray(scene(64, 64)).save(tmp_path / "a.png")
    base = ["predict", "--model", str(ckpt), "--image", str(tmp_path / "a.png"), "--question", "Where?", "--out"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main([*base, str(mine)]) == 2
    assert "holds files that are not a segearth predict output" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # another predict holds the lock of this --out (as a running one does): refused, nothing written
    busy = tmp_path / "busy"
    with open(tmp_path / ".busy.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main([*base, str(busy)]) == 2
    assert "another segearth predict is writing there" in capsys.readouterr().err and not busy.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".busy.partial")]


# ------------------------------------------------------------------ answers of several targets
TARGETS_READOUT = {"name": "targets", "targets": 4, "layers": 1, "heads": 2}


def targets_checkpoint(folder: Path) -> Path:
    """A tiny model with target queries whose every query is a target (objectness bias 5: an untrained one may
    choose none), whose answer covers most of an image (head bias 2) and whose targets are parts of it, each query
    picking its own (their weights over the grid scaled up from their near-zero start)."""
    _, cfg = tiny_experiment(folder)
    cfg["model"]["readout"] = TARGETS_READOUT
    path = write_checkpoint(cfg, folder / "targets.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["state_dict"]
    state["model.readout.objectness.bias"].fill_(5.0)
    state["model.mask_head.bias"].fill_(2.0)
    state["model.readout.where.weight"].normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def targets_ckpt(tmp_path_factory) -> Path:
    return targets_checkpoint(tmp_path_factory.mktemp("targets"))


def read_ids(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_predict_writes_each_answers_targets_as_an_id_map_geojson_features_and_a_geotiff(targets_ckpt, tmp_path):
    """A one-tile PNG (the target queries' masks) and a two-tile GeoTIFF (the blended mask's regions): the id PNG
    holds exactly the ids 0..len(targets), each target's pixel count is its record's area; the GeoJSON has one valid
    feature per target with its id and score; the targets GeoTIFF lies on the mask GeoTIFF's grid with the PNG's
    ids."""
    Image.fromarray(scene(64, 64)).save(tmp_path / "one.png")
    write_geotiff(tmp_path / "two.tif", scene(64, 96, 1))
    (tmp_path / "m.csv").write_text("image,question\none.png,Where could a seaplane land?\ntwo.tif,Where?\n")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(targets_ckpt), "--input", str(tmp_path / "m.csv"), "--out", str(out),
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["tiles"] for r in rows] == [1, 2] and "targets_geotiff" not in rows[0]  # the PNG has no georeference
    for row in rows:
        targets = row["targets"]
        # the one-tile image: its target queries; the tiled scene: its mask's regions (here the whole scene)
        assert len(targets) >= (2 if row["tiles"] == 1 else 1)
        assert [t["id"] for t in targets] == list(range(len(targets)))
        assert row["targets_mask"] == row["mask"].replace("_mask.png", "_targets.png")
        ids = read_ids(out / row["targets_mask"])
        assert ids.shape == (row["height"], row["width"])
        np.testing.assert_array_equal(np.unique(ids[ids > 0]), np.arange(1, len(targets) + 1))
        assert not ids[np.asarray(Image.open(out / row["mask"])) == 0].any()  # within the answer
        assert np.bincount(ids.ravel())[1:].tolist() == [t["area_px"] for t in targets]
    row, ids = rows[1], read_ids(out / rows[1]["targets_mask"])
    assert [t["area_m2"] for t in row["targets"]] == [t["area_px"] * 0.25 for t in row["targets"]]
    features = json.loads((out / row["geojson"]).read_text())["features"]
    assert [(f["properties"]["target_id"], f["properties"]["score"]) for f in features] == [
        (t["id"], t["score"]) for t in row["targets"]]
    assert [f["properties"]["area_px"] for f in features] == [t["area_px"] for t in row["targets"]]
    assert all(shape(f["geometry"]).is_valid for f in features)
    with rasterio.open(out / row["mask_geotiff"]) as mask, rasterio.open(out / row["targets_geotiff"]) as src:
        assert (src.transform, src.crs, src.shape) == (mask.transform, mask.crs, mask.shape)
        np.testing.assert_array_equal(src.read(1), ids)


def georeferenced_prediction(targets: list[np.ndarray], scores: list[float]) -> Prediction:
    """A 40 x 60 answer of ``targets`` (bool masks), most probable first, on a 0.5 m grid in UTM."""
    geo = GeoReference(from_origin(300000, 2780000, 0.5, 0.5), UTM)
    image = LoadedImage(np.full((40, 60, 3), 100, np.uint8), "scene", None, geo)
    mask = np.logical_or.reduce(targets)
    ids = np.zeros(mask.shape, np.uint16)
    for number, target in enumerate(targets, start=1):
        ids[target] = number
    found = [PredictedTarget(s, int(m.sum()), m.sum() * 0.25) for m, s in zip(targets, scores, strict=True)]
    return Prediction("Where are the boats?", mask, mask.astype(np.float32), 0.9, int(mask.sum()),
                      mask.sum() * 0.25, None, image, targets=found, target_ids=ids)


def rectangle(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[top:bottom, left:right] = True
    return mask


def test_targets_are_written_as_an_id_map_a_geotiff_and_one_geojson_feature_each(tmp_path):
    """Two targets, the second of two regions: the id map and its GeoTIFF hold them by id, the second is one
    MultiPolygon feature, and the overlay draws each target in its colour."""
    first, second = rectangle(5, 5, 20, 25), rectangle(20, 20, 30, 40) | rectangle(32, 50, 38, 58)
    prediction = georeferenced_prediction([first, second], [0.9, 0.8])
    row = write_sample(prediction, 0, tmp_path)
    assert [(t["id"], t["score"], t["area_px"], t["area_m2"]) for t in row["targets"]] == [
        (0, 0.9, 300, 75.0), (1, 0.8, int(second.sum()), second.sum() * 0.25)]
    ids = read_ids(tmp_path / row["targets_mask"])
    np.testing.assert_array_equal(ids, first * 1 + second * 2)
    with rasterio.open(tmp_path / row["targets_geotiff"]) as src:
        np.testing.assert_array_equal(src.read(1), ids)
        assert src.colormap(1)[1][:3] == palette_rgb(0) and src.colormap(1)[2][:3] == palette_rgb(1)
    features = json.loads((tmp_path / row["geojson"]).read_text())["features"]
    geometries = [shape(f["geometry"]) for f in features]
    assert [g.geom_type for g in geometries] == ["Polygon", "MultiPolygon"] and all(g.is_valid for g in geometries)
    assert [f["properties"]["area_m2"] for f in features] == [g.area for g in geometries] == [75.0, second.sum() * 0.25]
    assert features[1]["properties"] == {"question": "Where are the boats?", "score": 0.8, "target_id": 1,
                                         "area_px": int(second.sum()), "area_m2": second.sum() * 0.25}
    overlay = np.asarray(Image.open(tmp_path / row["overlay"]))[:40]
    colours = {tuple(p) for p in overlay.reshape(-1, 3)}
    assert palette_rgb(0) in colours and palette_rgb(1) in colours


def test_an_answer_with_no_targets_is_one_unlocated_no_target_feature_and_an_empty_id_map(tmp_path):
    prediction = georeferenced_prediction([np.zeros((40, 60), bool)], [0.9])
    prediction = dataclasses.replace(prediction, targets=[], target_ids=None, score=0.0)
    row = write_sample(prediction, 0, tmp_path)
    assert row["targets"] == [] and not read_ids(tmp_path / row["targets_mask"]).any()
    (feature,) = json.loads((tmp_path / row["geojson"]).read_text())["features"]
    assert feature == {"type": "Feature", "geometry": None,
                       "properties": {"question": "Where are the boats?", "score": 0.0, "no_target": True,
                                      "area_px": 0}}


def test_more_than_255_targets_make_a_16_bit_id_map(tmp_path):
    cells = [rectangle(r, c, r + 1, c + 1) for r in range(0, 40, 2) for c in range(0, 60, 4)]  # 300 pixels apart
    row = write_sample(georeferenced_prediction(cells, [0.9] * len(cells)), 0, tmp_path)
    ids = read_ids(tmp_path / row["targets_mask"])
    assert len(row["targets"]) == 300 and ids.max() == 300 and ids[38, 56] == 300
    with rasterio.open(tmp_path / row["targets_geotiff"]) as src:
        assert src.dtypes == ("uint16",)
        np.testing.assert_array_equal(src.read(1), ids)


def test_a_model_without_target_queries_answers_with_the_regions_of_its_mask(tmp_path):
    """Its targets are the connected regions of the answer mask, most probable (mean probability) first, each one
    GeoJSON feature and one id in the targets PNG."""
    _, cfg = tiny_experiment(tmp_path)
    cfg["eval"]["threshold"] = -2.0  # partial masks from an untrained head near its prior
    path = write_checkpoint(cfg, tmp_path / "plain.ckpt")
    write_geotiff(tmp_path / "s.tif", scene(64, 64))
    out = tmp_path / "out"
    assert main(["predict", "--model", str(path), "--image", str(tmp_path / "s.tif"), "--question", "Where?",
                 "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "predictions.jsonl").read_text())
    mask = np.asarray(Image.open(out / row["mask"])) > 0
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    targets, ids = row["targets"], read_ids(out / row["targets_mask"])
    assert count >= 1 and len(targets) == count and sorted(t["area_px"] for t in targets) == sorted(
        np.bincount(labels.ravel())[1:].tolist())
    np.testing.assert_array_equal(ids > 0, mask)
    assert [t["score"] for t in targets] == sorted((t["score"] for t in targets), reverse=True)
    features = json.loads((out / row["geojson"]).read_text())["features"]
    assert [f["properties"]["target_id"] for f in features] == list(range(count))
