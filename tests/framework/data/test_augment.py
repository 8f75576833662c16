"""Question-aware augmentation: every transform moves the mask with the image, direction words follow the
geometry (so the rewritten text still describes the mask), "skip" keeps directional samples in place, configs
are checked, draws are seeded, and only the training split is augmented."""

import re

import albumentations as A
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from framework.core.config import AUGMENT_OPTIONS, DataSchema
from framework.core.errors import ConfigError
from framework.data import synth
from framework.data.augment import (
    Geometry,
    QuestionAwareAugment,
    augment_from_config,
    follows_quarter_turns,
    has_directional_words,
    rewrite_directions,
)
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import write_synthetic_dataset

H, W = 36, 52
NEUTRAL = "Which area is covered by open water?"
SEEDS = range(12)


def l_shape() -> np.ndarray:
    """An asymmetric mask, so that every flip and turn changes it."""
    mask = np.zeros((H, W), dtype=bool)
    mask[4:20, 6:12] = True
    mask[14:20, 6:30] = True
    return mask


def painted(mask: np.ndarray) -> np.ndarray:
    """The mask in red, a ramp in green: the image alone says where the mask is."""
    image = np.zeros((*mask.shape, 3), dtype=np.uint8)
    image[..., 0] = np.where(mask, 255, 0)
    image[..., 1] = np.linspace(0, 120, mask.shape[1], dtype=np.uint8)[None, :]
    return image


def border(mask: np.ndarray) -> np.ndarray:
    """Pixels with both values in their 3x3 neighbourhood."""
    padded = np.pad(mask, 1, mode="edge")
    h, w = mask.shape
    around = np.stack([padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])
    return around.any(0) & ~around.all(0)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"hflip": 1.0}, [np.fliplr]),
        ({"vflip": 1.0}, [np.flipud]),
        ({"rot90": 1.0}, [lambda m, k=k: np.rot90(m, k) for k in range(4)]),
        ({"color": 1.0}, [lambda m: m]),
        ({"scale": [1.3, 1.3]}, None),
        ({"scale": [0.7, 0.7]}, None),
    ],
    ids=["hflip", "vflip", "rot90", "color", "zoom_in", "zoom_out"],
)
def test_each_transform_keeps_the_mask_on_its_pixels(config, expected):
    mask = l_shape()
    image = painted(mask)
    outcomes = set()
    for seed in SEEDS:
        out_image, out_mask, question, _ = QuestionAwareAugment(**config)(image, mask, NEUTRAL, "", seed)
        assert out_mask.dtype == bool and out_image.dtype == np.uint8 and question == NEUTRAL
        red = out_image[..., 0] > 127
        if expected is None:  # a zoom interpolates the image but not the mask: they may differ on the border only
            assert not (red != out_mask)[~border(out_mask)].any()
            assert (out_mask.sum() > mask.sum()) == (config["scale"][0] > 1)
        else:
            assert (red == out_mask).all()
            matches = [i for i, f in enumerate(expected) if np.array_equal(f(mask), out_mask)]
            assert matches
            outcomes.add(matches[0])
    if expected is not None:
        assert outcomes == set(range(len(expected)))  # every turn count showed up
    if config == {"color": 1.0}:
        assert not np.array_equal(out_image, image)


@pytest.mark.parametrize(
    "config",
    [{"hflip": 1.0}, {"vflip": 1.0}, {"rot90": 1.0}, {"hflip": 0.5, "rot90": 0.5, "scale": [0.7, 1.3],
                                                      "translate": 0.1}],
    ids=["hflip", "vflip", "rot90", "all"],
)
def test_an_instance_id_map_takes_the_geometry_of_its_mask(config):
    ids = np.zeros((H, W), dtype=np.uint8)
    ids[4:20, 6:12], ids[14:20, 6:30], ids[24:32, 36:48] = 1, 2, 3  # the L in two instances, and a box
    augment = QuestionAwareAugment(**config)
    for seed in SEEDS:
        out_image, out_ids, _, _ = augment(painted(ids > 0), ids, NEUTRAL, "", seed)
        _, out_mask, _, _ = augment(painted(ids > 0), ids > 0, NEUTRAL, "", seed)
        assert out_ids.dtype == np.uint8 and out_ids.shape == out_mask.shape == out_image.shape[:2]
        np.testing.assert_array_equal(out_ids > 0, out_mask)
        assert set(np.unique(out_ids)) <= {0, 1, 2, 3}  # nearest neighbour: no id is blended into another
        if "scale" not in config:  # a flip or turn loses no pixel of any instance
            assert all((out_ids == k).sum() == (ids == k).sum() for k in (1, 2, 3))


def test_quarter_turn_is_counter_clockwise_and_north_becomes_west():
    image = np.zeros((3, 5), dtype=np.uint8)
    image[0] = 1  # the top row
    turned = A.RandomRotate90().apply(image, factor=1)
    assert turned.shape == (5, 3) and (turned[:, 0] == 1).all() and turned[:, 1:].sum() == 0  # now the left column
    assert rewrite_directions("north of the top", Geometry(quarter_turns=1)) == "west of the left"


REWRITES = [  # (text, hflip, vflip, one counter-clockwise quarter turn)
    ("east", "west", "east", "north"),
    ("left", "right", "left", "bottom"),
    ("north-east", "north-west", "south-east", "north-west"),
    ("northeastern", "northwestern", "southeastern", "northwestern"),
    ("south west", "south east", "north west", "south east"),
    ("leftmost", "rightmost", "leftmost", "bottommost"),
    ("north", "north", "south", "west"),
    ("top", "top", "bottom", "left"),
    ("upper", "upper", "lower", None),
    ("above", "above", "below", None),
    ("uppermost", "uppermost", "lowermost", None),
    ("top-right", "top-left", "bottom-right", "top-left"),
    ("upper left", "upper right", "lower left", "lower left"),
    ("westwards", "eastwards", "westwards", "southwards"),
    ("horizontally", "horizontally", "horizontally", "vertically"),
    ("clockwise", "counterclockwise", "counterclockwise", "clockwise"),
    ("North-East of the TOP, Upper Left", "North-West of the TOP, Upper Right", "South-East of the BOTTOM, Lower Left",
     "North-West of the LEFT, Lower Left"),
]


@pytest.mark.parametrize(("text", "hflipped", "vflipped", "turned"), REWRITES)
def test_rewrite_table(text, hflipped, vflipped, turned):
    assert rewrite_directions(text, Geometry(hflip=True)) == hflipped
    assert rewrite_directions(text, Geometry(vflip=True)) == vflipped
    assert follows_quarter_turns(text) == (turned is not None)
    if turned is None:
        with pytest.raises(ValueError, match="no counterpart"):
            rewrite_directions(text, Geometry(quarter_turns=1))
    else:
        assert rewrite_directions(text, Geometry(quarter_turns=1)) == turned


@pytest.mark.parametrize("text", [r[0] for r in REWRITES] + ["counterclockwise", "Northern rightmost TOP-LEFT"])
def test_rewrites_round_trip(text):
    for flip in (Geometry(hflip=True), Geometry(vflip=True)):
        assert rewrite_directions(rewrite_directions(text, flip), flip) == text
    if follows_quarter_turns(text):
        for k in range(1, 4):
            turned = text
            for _ in range(4):
                turned = rewrite_directions(turned, Geometry(quarter_turns=k))
            assert turned == text
            back = Geometry(quarter_turns=4 - k)
            assert rewrite_directions(rewrite_directions(text, Geometry(quarter_turns=k)), back) == text
    # a flip and a half turn both ways: hflip + vflip is the half turn
    half = Geometry(hflip=True, vflip=True)
    assert rewrite_directions(text, half) == rewrite_directions(rewrite_directions(text, Geometry(hflip=True)),
                                                                Geometry(vflip=True))


@pytest.mark.parametrize(
    "text",
    ["The leftover plots of Northampton's bottomland", "Panels on top of the roof", "A right of way at right angles",
     "Topeka uppercase Southerner", NEUTRAL],
)
def test_words_that_contain_or_resemble_directions_are_kept(text):
    assert not has_directional_words(text)
    assert all(rewrite_directions(text, Geometry(True, True, k)) == text for k in range(4))


def test_anticlockwise_is_read_and_counterclockwise_written():
    assert rewrite_directions("Anti-clockwise", Geometry(hflip=True)) == "Clockwise"
    assert rewrite_directions("anticlockwise", Geometry(quarter_turns=1)) == "anticlockwise"


CORNER = re.compile(r"(top|bottom) (left|right) corner, to the (north|south)-(east|west)")


def test_the_rewritten_question_names_the_corner_that_holds_the_mask():
    mask = np.zeros((H, W), dtype=bool)
    mask[2:8, 3:10] = True
    image = painted(mask)
    question = "Which patch is in the top left corner, to the north-west?"
    augment = QuestionAwareAugment(hflip=0.5, vflip=0.5, rot90=0.5, color=0.5, scale=[0.9, 1.1])
    corners = set()
    for seed in range(64):
        _, out_mask, q, a = augment(image, mask, question, "The patch in the upper left.", seed)
        vertical, horizontal, north_south, east_west = CORNER.search(q).groups()
        assert (north_south, east_west) == ({"top": "north", "bottom": "south"}[vertical],
                                             {"left": "west", "right": "east"}[horizontal])
        assert a == f"The patch in the {'upper' if vertical == 'top' else 'lower'} {horizontal}."
        rows, cols = np.nonzero(out_mask)
        assert (rows.mean() < out_mask.shape[0] / 2) == (vertical == "top")
        assert (cols.mean() < out_mask.shape[1] / 2) == (horizontal == "left")
        corners.add((vertical, horizontal, out_mask.shape))
    assert len(corners) == 8  # all four corners, each in both orientations of the frame


def test_vertical_only_words_stop_quarter_turns_but_not_flips():
    mask = l_shape()
    augment = QuestionAwareAugment(vflip=0.5, rot90=1.0)
    seen = set()
    for seed in SEEDS:
        _, out_mask, q, _ = augment(painted(mask), mask, "Which fields lie above the road?", "", seed)
        assert out_mask.shape == mask.shape
        flipped = q == "Which fields lie below the road?"
        assert flipped or q == "Which fields lie above the road?"
        assert (out_mask == (np.flipud(mask) if flipped else mask)).all()
        seen.add(flipped)
    assert seen == {True, False}


def north_of_road_scene(size: int = 64):
    """(image, fields, main road rows, target) of the first generated scene that asks ``field_north_of_road``."""
    for scene in range(50):
        rng = np.random.default_rng([0, scene])
        builder = synth._SceneBuilder(rng, size)
        image, instances = builder.build()
        for target in synth._relational_targets(instances, builder.main_road_rows, size):
            if target.concept == "field_north_of_road":
                return image, [f.mask for f in instances["field"]], builder.main_road_rows, target
    raise AssertionError("no scene asks field_north_of_road")


def test_vflipped_north_of_road_question_says_south_and_describes_the_flipped_mask():
    image, fields, road_rows, target = north_of_road_scene()
    size = image.shape[0]
    question = "Which fields lie north of the main road?"
    _, mask, q, answer = QuestionAwareAugment(vflip=1.0)(image, target.mask, question, target.answer, seed=0)
    assert q == "Which fields lie south of the main road?"
    assert "below the main road" in answer and "above" not in answer
    flipped_road = (size - 1) - road_rows
    south = [np.flipud(f) for f in fields if not synth._is_north(np.flipud(f), flipped_road)]
    assert 0 < len(south) < len(fields)
    assert (mask == np.logical_or.reduce(south)).all()


def test_skip_mode_keeps_directional_samples_in_place_but_recolours_them():
    mask = l_shape()
    image = painted(mask)
    augment = QuestionAwareAugment(hflip=1.0, vflip=1.0, rot90=1.0, color=1.0, scale=[1.2, 1.2], directional="skip")
    for seed in SEEDS[:4]:
        out_image, out_mask, q, a = augment(image, mask, "Which field is on the left?", "The upper one.", seed)
        assert (q, a) == ("Which field is on the left?", "The upper one.")
        assert (out_mask == mask).all() and out_image.shape == image.shape
        assert not np.array_equal(out_image, image)
    _, out_mask, _, _ = augment(image, mask, NEUTRAL, "", seed=0)
    assert out_mask.shape != mask.shape or not (out_mask == mask).all()


def test_a_zoom_that_would_crop_the_whole_target_keeps_the_sample():
    mask = np.zeros((H, W), dtype=bool)
    mask[:3, :3] = True
    image = painted(mask)
    out_image, out_mask, _, _ = QuestionAwareAugment(hflip=1.0, scale=[2.0, 2.0])(image, mask, NEUTRAL, "", 0)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)
    _, out_mask, _, _ = QuestionAwareAugment(hflip=1.0, scale=[1.1, 1.1])(image, mask, NEUTRAL, "", 0)
    assert out_mask[:3, -3:].any() and not out_mask[:, :W // 2].any()


def test_without_keep_target_a_zoom_may_crop_the_target_away():
    mask = np.zeros((H, W), dtype=bool)
    mask[:3, :3] = True
    _, out_mask, _, _ = QuestionAwareAugment(scale=[2.0, 2.0], keep_target=False)(painted(mask), mask, NEUTRAL, "", 0)
    assert out_mask.shape == mask.shape and not out_mask.any()


def test_translate_moves_the_view_and_the_mask_with_it():
    mask = np.zeros((H, W), dtype=bool)
    mask[15:21, 20:30] = True
    augment = QuestionAwareAugment(translate=0.2)
    centres = set()
    for seed in SEEDS:
        out_image, out_mask, q, _ = augment(painted(mask), mask, NEUTRAL, "", seed)
        assert q == NEUTRAL and out_mask.sum() > 0
        rows, cols = np.nonzero(out_mask)
        red_rows, red_cols = np.nonzero(out_image[..., 0] > 127)  # the image moved with the mask
        assert abs(red_rows.mean() - rows.mean()) < 1 and abs(red_cols.mean() - cols.mean()) < 1
        centres.add((round(rows.mean()), round(cols.mean())))
    assert len(centres) > 6  # shifted differently per seed


def test_equal_seeds_give_equal_samples():
    mask = l_shape()
    augment = QuestionAwareAugment(hflip=0.5, vflip=0.5, rot90=0.5, color=0.5, scale=[0.8, 1.2])
    runs = [[augment(painted(mask), mask, "What lies north?", "", seed) for seed in SEEDS] for _ in range(2)]
    for (i1, m1, q1, _), (i2, m2, q2, _) in zip(*runs):
        assert np.array_equal(i1, i2) and np.array_equal(m1, m2) and q1 == q2
    assert len({r[2] for r in runs[0]}) > 1


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hfilp": 0.5}, r"unknown key 'hfilp'; valid: " + ", ".join(AUGMENT_OPTIONS)),
        ({"hflip": 1.5}, r"data\.augment\.hflip: expected a probability in \[0, 1\], got 1\.5"),
        ({"color": -0.1}, r"data\.augment\.color"),
        ({"rot90": "often"}, r"data\.augment\.rot90"),
        ({"vflip": True}, r"data\.augment\.vflip"),
        ({"scale": [1.2, 0.8]}, r"data\.augment\.scale"),
        ({"scale": [0, 1]}, r"data\.augment\.scale"),
        ({"scale": [1.1]}, r"data\.augment\.scale"),
        ({"directional": "drop"}, r"data\.augment\.directional: expected one of rewrite, skip"),
        ({"translate": 1.0}, r"data\.augment\.translate: expected a fraction in \[0, 1\)"),
        ({"keep_target": "yes"}, r"data\.augment\.keep_target: expected true or false"),
        ([0.5], r"data\.augment: expected a mapping"),
    ],
)
def test_bad_configs_are_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        augment_from_config(config)


def test_empty_config_means_no_augmentation_and_the_schema_takes_a_mapping():
    assert augment_from_config(None) is None and augment_from_config({}) is None
    data = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(DataSchema), {"augment": {"scale": [0.8, 1.2]}}))
    assert data["augment"] == {"scale": [0.8, 1.2]}
    assert OmegaConf.structured(DataSchema).augment is None


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, n=6, seed=1, image_size=64)
    return root


def data_config(root, augment, **extra) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.structured(DataSchema))
    return {**cfg, "root": str(root), "image_size": 64, "batch_size": 2, "augment": augment, **extra}


def test_only_the_training_split_is_augmented(synth_root):
    augmented = ReasoningDataModule(data_config(synth_root, {"hflip": 1.0, "color": 1.0}))
    plain = ReasoningDataModule(data_config(synth_root, None))
    for stage in ("val", "test", "test_shuffled"):
        for i in range(len(plain.dataset(stage))):
            a, b = augmented.dataset(stage)[i], plain.dataset(stage)[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
            assert a["question"] == b["question"]
    train, reference = augmented.dataset("train"), plain.dataset("train")
    for i in range(len(train)):
        a, b = train[i], reference[i]
        assert torch.equal(a["mask"], b["mask"].flip(-1))  # square 64 px scenes: letterboxing is the identity
        assert torch.equal(a["instances"], b["instances"].flip(-1))
        assert a["answer"] == rewrite_directions(b["answer"], Geometry(hflip=True))
    assert any(train[i]["answer"] != reference[i]["answer"] for i in range(len(train)))


def test_loader_batches_are_seeded_in_workers(synth_root):
    cfg = data_config(synth_root, {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "color": 0.5}, num_workers=1)

    def first_batch(seed, main_seed):
        torch.manual_seed(main_seed)  # the main process's state does not matter: workers seed from the loader
        return next(iter(ReasoningDataModule(cfg, seed=seed).train_dataloader()))

    a, b, c = first_batch(0, main_seed=1), first_batch(0, main_seed=2), first_batch(1, main_seed=1)
    assert torch.equal(a["image"], b["image"]) and a["question"] == b["question"]
    assert not torch.equal(a["image"], c["image"])
