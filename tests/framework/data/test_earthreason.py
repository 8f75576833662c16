import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import DataError
from framework.data.datamodule import ShuffledQuestions
from framework.data.earthreason import NO_TARGET_ANSWER, EarthReasonDataset, prepare_split_folders
from framework.data.synth import write_synthetic_dataset
from framework.data.transforms import box_mask, letterbox_geometry


def write_sample(root: Path, stem: str, size=(40, 30), questions=("q1?", "q2?"), answer=("a",), fill=True):
    split = root / "train"
    for d in ("images", "labels", "QAs"):
        (split / d).mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(split / "images" / f"{stem}.jpg")
    label = np.zeros((h, w), np.uint8)
    if fill:
        label[: h // 2] = 255
    Image.fromarray(label).save(split / "labels" / f"{stem}.png")
    (split / "QAs" / f"{stem}.json").write_text(json.dumps({"questions": list(questions), "answer": list(answer)}))


def write_instances(root: Path, stem: str, ids: np.ndarray) -> Path:
    """``ids`` uint8 [H,W] as ``<root>/train/instances/<stem>.png``."""
    folder = root / "train" / "instances"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids).save(folder / f"{stem}.png")
    return folder / f"{stem}.png"


def two_instances(size=(40, 30)) -> np.ndarray:
    """The instance map of ``write_sample``'s label (the top half): ids 1 (left) and 2 (right)."""
    w, h = size
    ids = np.zeros((h, w), np.uint8)
    ids[: h // 2, : w // 2], ids[: h // 2, w // 2 :] = 1, 2
    return ids


def test_pairs_by_stem_and_uses_every_question(tmp_path):
    write_sample(tmp_path, "b")
    write_sample(tmp_path, "a", questions=("only?",))
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=32, questions="all")
    assert [(s.stem, s.question) for s in ds.samples] == [("a", "only?"), ("b", "q1?"), ("b", "q2?")]
    first = EarthReasonDataset(str(tmp_path), "train", image_size=32, questions="first")
    assert [s.question for s in first.samples] == ["only?", "q1?"]
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert item["mask"].max() == 1 and item["answer"] == "a"
    # without an instances folder the mask is one instance
    assert item["instances"].dtype == torch.uint8 and torch.equal(item["instances"], item["mask"])
    assert torch.equal(item["native_instances"], item["native_mask"].to(torch.uint8))


def test_instance_maps_are_read_by_stem(tmp_path):
    write_sample(tmp_path, "a")
    write_sample(tmp_path, "b", answer=(), fill=False)
    write_instances(tmp_path, "a", two_instances())
    write_instances(tmp_path, "b", np.zeros((30, 40), np.uint8))
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=80)
    item = ds[0]
    assert item["native_instances"].shape == (30, 40) and item["native_instances"].dtype == torch.uint8
    np.testing.assert_array_equal(item["native_instances"].numpy(), two_instances())
    assert item["instances"].shape == (80, 80) and torch.unique(item["instances"]).tolist() == [0, 1, 2]
    assert torch.equal(item["mask"], (item["instances"] > 0).to(torch.uint8))
    assert not item["instances"][:10].any()  # letterbox padding (top 10 rows of 80) holds no instance
    assert not ds[len(ds) - 1]["instances"].any()


def test_a_missing_instance_map_names_its_file(tmp_path):
    write_sample(tmp_path, "a")
    write_sample(tmp_path, "b")
    write_instances(tmp_path, "a", two_instances())
    with pytest.raises(DataError, match=r"instances/b\.png: missing instance map") as err:
        EarthReasonDataset(str(tmp_path), "train", image_size=32)
    assert "\n" not in str(err.value)
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=32, on_bad_sample="skip")
    assert {s.stem for s in ds.samples} == {"a"}
    assert ds.skipped[0][0].endswith("b.json") and "b.png: missing instance map" in ds.skipped[0][1]


def test_an_instance_map_of_another_size_names_its_file(tmp_path):
    write_sample(tmp_path, "a")
    write_instances(tmp_path, "a", np.ones((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"instances/a\.png: instance map is 5x5, label is 40x30") as err:
        EarthReasonDataset(str(tmp_path), "train", image_size=32)[0]
    assert "\n" not in str(err.value)


def test_instance_ids_that_are_not_the_label_name_the_file(tmp_path):
    write_sample(tmp_path, "a")
    ids = two_instances()
    ids[-1, -1] = 3  # one instance pixel outside the label
    write_instances(tmp_path, "a", ids)
    with pytest.raises(DataError, match=r"instances/a\.png: instance ids > 0 differ from the label's mask at 1 pix"):
        EarthReasonDataset(str(tmp_path), "train", image_size=32)[0]
    write_instances(tmp_path, "a", np.zeros((30, 40, 3), np.uint8))  # RGB: not an id map
    with pytest.raises(DataError, match=r"a\.png: an instance map must be 8-bit single-band"):
        EarthReasonDataset(str(tmp_path), "train", image_size=32)[0]


def test_synthetic_instance_maps_read_back(tmp_path):
    write_synthetic_dataset(tmp_path, n=3, seed=1, image_size=64)
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=64, questions="first")
    for index, sample in enumerate(ds.samples):
        item = ds[index]
        written = np.asarray(Image.open(tmp_path / "train" / "instances" / f"{sample.stem}.png"))
        np.testing.assert_array_equal(item["native_instances"].numpy(), written)
        assert torch.equal(item["mask"], (item["instances"] > 0).to(torch.uint8))
    assert [int(ds[i]["instances"].max()) for i in range(len(ds))] == [1, 3, 4]


def test_prepare_split_folders_makes_and_clears_instances_only_when_asked(tmp_path):
    prepare_split_folders(tmp_path, ("train",), overwrite=False)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["QAs", "images", "labels"]
    write_instances(tmp_path, "stale", np.zeros((2, 2), np.uint8))
    prepare_split_folders(tmp_path, ("train",), overwrite=True)  # a stale instances folder is removed
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["QAs", "images", "labels"]
    prepare_split_folders(tmp_path, ("train",), overwrite=False, instances=True)
    assert (tmp_path / "train" / "instances").is_dir()


def test_unpaired_stems_are_reported_not_misaligned(tmp_path):
    write_sample(tmp_path, "a")
    write_sample(tmp_path, "b")
    (tmp_path / "train" / "labels" / "a.png").unlink()
    with pytest.raises(DataError, match=r"1 stems lack a partner: a \(missing label\)"):
        EarthReasonDataset(str(tmp_path), "train", image_size=32)


def test_empty_answer_means_no_target_and_the_label_is_checked(tmp_path):
    write_sample(tmp_path, "a", answer=(), fill=False)
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=32)
    assert ds.samples[0].answer == NO_TARGET_ANSWER and ds[0]["mask"].sum() == 0
    write_sample(tmp_path, "b", answer=(), fill=True)
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=32)
    with pytest.raises(DataError, match="label is not empty"):
        ds[len(ds) - 1]


def test_label_of_another_size(tmp_path):
    write_sample(tmp_path, "a")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "train" / "labels" / "a.png")
    with pytest.raises(DataError, match="label is 5x5, image is 40x30"):
        EarthReasonDataset(str(tmp_path), "train", image_size=32)[0]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"{not json", "invalid JSON"),
        (b'{"answer": []}', "'questions' must be"),
        (b'{"questions": ["q"], "answer": "x"}', "'answer' must be a list"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
    ],
)
def test_bad_qa_files_name_the_file(tmp_path, content, message):
    write_sample(tmp_path, "a")
    (tmp_path / "train" / "QAs" / "a.json").write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        EarthReasonDataset(str(tmp_path), "train", image_size=32)
    assert "a.json" in str(err.value)


def test_corrupt_image_names_the_file(tmp_path):
    write_sample(tmp_path, "a")
    (tmp_path / "train" / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="a.jpg"):
        EarthReasonDataset(str(tmp_path), "train", image_size=32)[0]


def test_missing_split(tmp_path):
    with pytest.raises(DataError, match="not found"):
        EarthReasonDataset(str(tmp_path), "val", image_size=32)


def test_letterbox_geometry_and_box_mask():
    assert letterbox_geometry(30, 40, 32) == (4, 0, 24, 32)  # short side truncated, centred
    assert letterbox_geometry(40, 30, 32) == (0, 4, 32, 24)
    m = box_mask(torch.tensor([[4, 0, 24, 32]]), 32)
    assert m.sum() == 24 * 32 and not m[0, 3].any() and m[0, 4].all()


def test_shuffled_questions_is_a_derangement(tmp_path):
    for i in range(5):
        write_sample(tmp_path, f"s{i}", questions=(f"question {i}?",), answer=(f"answer {i}",))
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=32)
    shuffled = ShuffledQuestions(ds, seed=3)
    assert sorted(shuffled.perm) == list(range(5))
    for i in range(5):
        item = shuffled[i]
        assert item["question"] != ds.samples[i].question and item["stem"] == ds.samples[i].stem
        assert item["answer"] == f"answer {item['question'].split()[1][:-1]}"


def test_skip_leaves_out_unpaired_stems_and_bad_qas(tmp_path):
    for stem in "abc":
        write_sample(tmp_path, stem)
    (tmp_path / "train" / "labels" / "a.png").unlink()
    (tmp_path / "train" / "QAs" / "b.json").write_text("{not json")
    ds = EarthReasonDataset(str(tmp_path), "train", image_size=32, on_bad_sample="skip")
    assert {s.stem for s in ds.samples} == {"c"}
    assert [(Path(f).name, reason.split(":")[-1].strip()) for f, reason in ds.skipped][0] == ("a", "missing label")
    assert ds.skipped[1][0].endswith("b.json") and "invalid JSON" in ds.skipped[1][1]
