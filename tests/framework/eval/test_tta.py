"""Test-time augmentation: views that move pixels the way the question rewriting moves directions, exact
inverses, a mean over the views a question can follow, and TTA over the whole dihedral group making the real
model's prediction rotate with its input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framework.core.config import TTA_MODES, load_config
from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from framework.data.augment import Geometry
from framework.eval.tta import TTA_VIEWS, ViewAverage, averaged_output, from_view, questions_in_view, to_view, tta_views
from framework.infer.predictor import Predictor, predict_options
from tests.framework.infer.test_bundle import tiny_experiment
from tests.tiny import tiny_config, write_config

DIHEDRAL = TTA_VIEWS["dihedral"]


@pytest.mark.parametrize("view", DIHEDRAL, ids=str)
def test_a_pixel_moves_where_the_question_rewriting_says_directions_go(view):
    """A pixel one step below and two right of the centre lands at Geometry.move((1, 2)) from the centre: the
    image transform and the rewriting of "north"/"left" in the question are the same symmetry."""
    size, centre = 9, 4
    image = torch.zeros(size, size)
    image[centre + 1, centre + 2] = 1
    row, col = (int(v) for v in torch.nonzero(to_view(image, view))[0])
    assert (row - centre, col - centre) == view.move((1, 2))


@pytest.mark.parametrize("view", DIHEDRAL, ids=str)
def test_from_view_inverts_to_view(view):
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(from_view(to_view(x, view), view), x)


def test_modes():
    images = [to_view(torch.arange(16.0).reshape(4, 4), v) for v in DIHEDRAL]
    assert len({tuple(i.flatten().tolist()) for i in images}) == 8  # the 8 symmetries of the square, no repeat
    assert tta_views(None) == tta_views("none") == (Geometry(),)
    assert len(tta_views("flips")) == 4 and all(v.quarter_turns == 0 for v in tta_views("flips"))
    assert all(modes[0] == Geometry() for modes in TTA_VIEWS.values())  # the identity first
    assert tuple(TTA_VIEWS) == TTA_MODES  # every mode the config accepts has its views
    with pytest.raises(ConfigError, match="unknown mode 'rot'"):
        tta_views("rot")


def test_questions_are_asked_as_they_read_in_each_view():
    questions = ["Where could a boat moor?", "Which pier is north of the lake?", "What lies above the road?"]
    asked, valid = questions_in_view(questions, Geometry(hflip=True))
    assert asked == questions and valid.all()  # a left-right mirror keeps north and above
    asked, valid = questions_in_view(questions, Geometry(vflip=True))
    assert asked[1] == "Which pier is south of the lake?" and asked[2] == "What lies below the road?"
    asked, valid = questions_in_view(questions, Geometry(quarter_turns=1))
    assert asked[1] == "Which pier is west of the lake?"
    assert valid.tolist() == [True, True, False]  # "above" has no one-word counterpart after a quarter turn


def test_view_average_counts_each_row_over_its_own_views():
    mean = ViewAverage()
    identity, turn = Geometry(), Geometry(quarter_turns=1)
    first, second = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    mean.add(first, identity, torch.tensor([True, True]))
    mean.add(second, turn, torch.tensor([True, False]))
    result = mean.result()
    assert torch.allclose(result[0], (first[0] + from_view(second, turn)[0]) / 2)
    assert torch.equal(result[1], first[1])
    with pytest.raises(RuntimeError, match="no view"):
        empty = ViewAverage()
        empty.add(first, identity, torch.tensor([False, True]))
        empty.result()


@pytest.fixture(scope="module")
def tiny_model() -> SegEarthModel:
    torch.manual_seed(0)
    return SegEarthModel(tiny_config()["model"]).eval()


def test_dihedral_tta_makes_the_prediction_rotate_with_the_image(tiny_model):
    """Averaging over the whole group: predicting on a turned or mirrored image gives the turned or mirrored
    prediction (up to float rounding), which no single forward pass of a CNN guarantees."""
    images = torch.randn(2, 3, 64, 64)
    questions = ["Where could a boat moor?", "Where do trees grow?"]
    with torch.no_grad():
        plain = averaged_output(tiny_model, images, questions, None, "none").mask_logits
        tta = averaged_output(tiny_model, images, questions, None, "dihedral").mask_logits
        for view in (Geometry(quarter_turns=1), Geometry(hflip=True, quarter_turns=1)):
            seen = averaged_output(tiny_model, to_view(images, view), questions, None, "dihedral").mask_logits
            assert torch.allclose(seen, to_view(tta, view), atol=1e-5)
            alone = averaged_output(tiny_model, to_view(images, view), questions, None, "none").mask_logits
            assert not torch.allclose(alone, to_view(plain, view), atol=1e-3)  # the model alone is not invariant
        assert torch.equal(plain, tiny_model(images, questions).mask_logits)


def test_predictor_with_tta_is_the_evaluators_tta(tmp_path):
    """``predict.tta`` in the Predictor (encoder once per view) equals ``eval.tta`` in the evaluator's path."""
    _, cfg = tiny_experiment(tmp_path)
    cfg["predict"] = {**cfg["predict"], "tta": "dihedral"}
    torch.manual_seed(0)
    model = SegEarthModel(cfg["model"]).eval()
    predictor = Predictor(model, cfg)
    size = predictor.image_size
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    result = predictor.predict(pixels, "Where could a boat moor?")
    turned = predictor.predict(np.ascontiguousarray(np.rot90(pixels)), "Where could a boat moor?")
    np.testing.assert_allclose(np.rot90(result.probability), turned.probability, atol=1e-5)


def test_bad_tta_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="eval.tta: expected one of none, flips, dihedral, got 'all'"):
        load_config(write_config(tmp_path / "c.yaml", tiny_config(eval={"tta": "all"})))
    with pytest.raises(ConfigError, match="predict.tta: expected one of"):
        predict_options({}, tta="mirror")
