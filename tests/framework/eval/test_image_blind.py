"""The image-blind control: only the visual tokens change (they come from another image of the split, the same
stand-in for every question of an image, in every test-time view), and ``segearth test`` reports the control for
a model with visual tokens only."""

from __future__ import annotations

import json

import pytest
import torch

from framework.cli.main import main
from framework.core.config import with_defaults
from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from framework.data.augment import Geometry
from framework.data.datamodule import ForeignImages, ReasoningDataModule
from framework.data.samples import collate
from framework.data.synth import write_synthetic_dataset
from framework.eval.image_blind import image_blind_see
from framework.eval.tta import TTA_VIEWS, averaged_output, to_view
from tests.tiny import TINY_IMAGE_PATH, tiny_config, write_config

QUESTION = "Where is the water?"


@pytest.fixture(scope="module")
def model() -> SegEarthModel:
    cfg = tiny_config()
    cfg["model"].update(TINY_IMAGE_PATH)
    torch.manual_seed(0)
    return SegEarthModel(with_defaults(cfg)["model"]).eval()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Synthetic data whose test split has three scenes of two samples each."""
    root = tmp_path_factory.mktemp("scenes")
    counts = write_synthetic_dataset(root, n=20, seed=4, image_size=64, samples_per_scene=2)
    assert counts["test"] == 6
    return root


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_only_the_visual_tokens_come_from_the_foreign_image(model):
    images, foreign = _images(3), _images(3, seed=1)
    seen, blind = model.see(images), image_blind_see(model, foreign)(images, Geometry())
    assert torch.equal(blind.visual_tokens, model.see(foreign).visual_tokens)
    assert all(torch.equal(a, b) for a, b in zip(blind.features, seen.features, strict=True))
    index, questions = torch.tensor([0, 0, 1, 2]), [QUESTION] * 4
    assert not torch.allclose(model.answer(seen, questions, index).mask_logits,
                              model.answer(blind, questions, index).mask_logits)  # the tokens reach the answer
    # its own image as the foreign one: nothing changes
    assert torch.equal(model.answer(image_blind_see(model, images)(images, Geometry()), questions, index).mask_logits,
                       model(images, questions, index).mask_logits)


@torch.no_grad()
def test_each_test_time_view_sees_the_foreign_image_in_that_view(model):
    images, foreign, questions = _images(2), _images(2, seed=1), [QUESTION, "Where is the road?"]
    see = image_blind_see(model, foreign)
    seen_tokens = []
    averaged_output(model, images, questions, None, "flips",
                    see=lambda x, view: seen_tokens.append((view, see(x, view).visual_tokens)) or see(x, view))
    assert [view for view, _ in seen_tokens] == list(TTA_VIEWS["flips"])
    for view, tokens in seen_tokens:
        assert torch.equal(tokens, model.visual_tokens(to_view(foreign, view)))


def test_a_model_without_visual_tokens_has_none_to_swap():
    with pytest.raises(ConfigError, match="no visual tokens"):
        SegEarthModel(with_defaults(tiny_config())["model"]).visual_tokens(_images(1))


def test_foreign_images_are_a_derangement_of_the_split_images(scenes):
    data = ReasoningDataModule(with_defaults(tiny_config(data={"root": str(scenes)}))["data"])
    test = data.dataset("test")
    foreign = ForeignImages(test, seed=0)
    key = [s.image_file for s in test.samples]
    assert len(set(key)) > 1
    for i, donor in enumerate(foreign.donor):
        assert key[donor] != key[i]
        # every sample of an image has the same stand-in
        assert {key[d] for j, d in enumerate(foreign.donor) if key[j] == key[i]} == {key[donor]}
    batch = collate([foreign[i] for i in range(len(foreign))])
    assert len(batch["image"]) == 3
    assert batch["foreign_image"].shape == batch["image"].shape
    assert torch.equal(batch["foreign_image"][batch["image_index"][0]], test[foreign.donor[0]]["image"])


@pytest.mark.parametrize("visual_tokens", [True, False], ids=["visual tokens", "text only"])
def test_segearth_test_reports_the_control_for_models_with_visual_tokens(tmp_path, scenes, visual_tokens):
    cfg = tiny_config(data={"root": str(scenes)}, output_dir=str(tmp_path / "runs"))
    if visual_tokens:  # the faithful data path, answering in words too
        cfg["model"].update(TINY_IMAGE_PATH)
        cfg["model"]["llm"] = {**cfg["model"]["llm"], "answer_template": " A: <answer><eos>"}
        cfg["predict"] = {"answer_tokens": 4}
    cfg["tracking"] = {"enabled": False}
    path = write_config(tmp_path / "tiny.yaml", cfg)
    assert main(["test", str(path), "--out", str(tmp_path / "out"), "--no-shuffled"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    table = (tmp_path / "out" / "results.md").read_text()
    assert ("test_image_blind" in results) == visual_tokens
    assert ("visual tokens of another image" in table) == visual_tokens
    if visual_tokens:
        blind, true = results["test_image_blind"], results["test"]
        assert blind["metrics"]["n"] == true["metrics"]["n"]
        assert [s["id"] for s in blind["samples"]] == [s["id"] for s in true["samples"]]
        for result in (blind, true):  # what the LLM says with another image's tokens is scored as well
            assert result["metrics"]["answer_n"] == result["metrics"]["n"]
            assert all(isinstance(s["answer"], str) for s in result["samples"])
        assert main(["test", str(path), "--out", str(tmp_path / "off"), "--no-shuffled", "--no-image-blind"]) == 0
        assert "test_image_blind" not in json.loads((tmp_path / "off" / "results.json").read_text())


def test_a_test_split_of_one_image_says_the_control_was_not_run(tmp_path, synth_root, capsys):
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    cfg["model"].update(TINY_IMAGE_PATH)
    cfg["tracking"] = {"enabled": False}
    path = write_config(tmp_path / "tiny.yaml", cfg)
    assert main(["test", str(path), "--out", str(tmp_path / "out"), "--no-shuffled"]) == 0
    assert "the test split has a single image" in capsys.readouterr().out
    assert "test_image_blind" not in json.loads((tmp_path / "out" / "results.json").read_text())
