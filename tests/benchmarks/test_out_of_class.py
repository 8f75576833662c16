"""The out-of-class probe: per-image class regions from the Dubai layout, the kinds of question, the best-class
IoU, and the command on a real (tiny, untrained) model's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmarks import out_of_class
from tests.framework.infer.test_bundle import tiny_experiment, write_checkpoint

SIZE = 32


def _layout(root: Path) -> dict[str, np.ndarray]:
    """One 32x32 image ``tile-6_a`` with water (left half) and land (right half); buildings asked, absent."""
    regions = {"water": np.zeros((SIZE, SIZE), bool), "land": np.zeros((SIZE, SIZE), bool),
               "building": np.zeros((SIZE, SIZE), bool)}
    regions["water"][:, : SIZE // 2] = True
    regions["land"][:, SIZE // 2:] = True
    for sub in ("images", "labels", "QAs"):
        (root / "test" / sub).mkdir(parents=True)
    for concept, region in regions.items():
        stem = f"tile-6_a_{concept}"
        Image.new("RGB", (SIZE, SIZE), (40, 90, 120)).save(root / "test" / "images" / f"{stem}.jpg")
        Image.fromarray(region.astype(np.uint8) * 255).save(root / "test" / "labels" / f"{stem}.png")
        qa = {"questions": [f"Where is the {concept}?", "unused"], "answer": [], "concept": concept, "tile": 6}
        (root / "test" / "QAs" / f"{stem}.json").write_text(json.dumps(qa))
    return regions


class _AlwaysWater:
    """Answers every question with the water region at score 0.9: the nearest-class behaviour the probe exposes."""

    def __init__(self, water: np.ndarray) -> None:
        self.water = water
        self.asked: list[list[str]] = []

    def predict(self, image, questions):
        assert Path(image).is_file()
        self.asked.append(list(questions))
        return [SimpleNamespace(mask=self.water, score=0.9) for _ in questions]


def test_kinds_best_class_and_summary(tmp_path):
    regions = _layout(tmp_path)
    predictor = _AlwaysWater(regions["water"])
    rows = out_of_class.answers(predictor, tmp_path, "test", out_of_class=("Where is the snow?",))
    assert predictor.asked == [["Where is the building?", "Where is the land?", "Where is the water?",
                                "Where is the snow?"]]
    by_question = {r.question: r for r in rows}
    assert by_question["Where is the building?"].kind == "in-class, no target"
    assert by_question["Where is the land?"].kind == "in-class, target present"
    assert by_question["Where is the land?"].iou == 0.0 and by_question["Where is the water?"].iou == 1.0
    snow = by_question["Where is the snow?"]
    assert (snow.kind, snow.best_class, snow.best_iou, snow.iou, snow.area) == ("out-of-class", "water", 1.0, None, 0.5)
    summary = {s.kind: s for s in out_of_class.summarise(rows)}
    assert summary["in-class, target present"].answers == 2 and summary["in-class, no target"].answers == 1
    assert summary["out-of-class"].mean_best_iou_nonempty == 1.0 and summary["out-of-class"].empty == 0
    assert "| out-of-class | 1 | 0 | 0.500 | 0.900 | 1.000 |" in out_of_class.markdown(list(summary.values()))


def test_command_on_a_checkpoint_writes_every_answer(tmp_path, capsys):
    _layout(tmp_path / "data")
    _, cfg = tiny_experiment(tmp_path)
    ckpt = write_checkpoint(cfg, tmp_path / "last.ckpt")
    out = tmp_path / "answers.json"
    assert out_of_class.main(["--model", str(ckpt), "--root", str(tmp_path / "data"), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert len(written["answers"]) == 3 + len(out_of_class.OUT_OF_CLASS)
    assert sum(s["answers"] for s in written["summary"]) == len(written["answers"])
    assert "| out-of-class | 6 |" in capsys.readouterr().out


def test_missing_split_is_one_line_and_exit_2(tmp_path, capsys):
    _, cfg = tiny_experiment(tmp_path)
    ckpt = write_checkpoint(cfg, tmp_path / "last.ckpt")
    assert out_of_class.main(["--model", str(ckpt), "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "segearth data dubai" in err


@pytest.mark.parametrize("concept", ["water", "land"])
def test_class_regions_read_back_the_labels(tmp_path, concept):
    regions = _layout(tmp_path)
    image_file, read, asked = out_of_class.class_regions(tmp_path, "test")["tile-6_a"]
    assert image_file.suffix == ".jpg" and asked[concept] == f"Where is the {concept}?"
    np.testing.assert_array_equal(read[concept], regions[concept])
