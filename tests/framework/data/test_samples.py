import logging

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ConfigError, DataError
from framework.data.augment import QuestionAwareAugment
from framework.data.samples import NO_TARGET_ANSWER, InstanceFile, MaskFile, Sample, SampleDataset, collate


class Listed(SampleDataset):
    """The base over a given list of samples."""

    def __init__(self, samples, **kwargs):
        super().__init__(image_size=8, **kwargs)
        self.samples = samples
        self.finish_index("listed")


def sample(tmp_path, name, value, readable=True):
    image, mask = tmp_path / f"{name}.png", tmp_path / f"{name}_m.png"
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(image)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
    if not readable:
        image.write_bytes(image.read_bytes()[:40])
    return Sample(name, image, MaskFile(mask), f"question {name}", "", True, "")


def test_unreadable_sample_raises_under_error(tmp_path):
    ds = Listed([sample(tmp_path, "a", 10), sample(tmp_path, "b", 20, readable=False)])
    assert ds[0]["question"] == "question a"
    with pytest.raises(DataError, match=r"b\.png: unreadable"):
        ds[1]


def test_unreadable_sample_under_skip_is_replaced_by_a_whole_other_sample(tmp_path, caplog):
    samples = [sample(tmp_path, "a", 10), sample(tmp_path, "b", 20, readable=False), sample(tmp_path, "c", 30)]
    ds = Listed(samples, on_bad_sample="skip")
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    # image, question, id and stem all come from sample c: nothing of b, nothing mixed
    assert (item["id"], item["stem"], item["question"]) == (2, "c", "question c")
    assert abs(float(item["image"][0, 4, 4]) - 30 / 255) < 1e-6
    assert ds.skipped == [(str(samples[1].image), ds.skipped[0][1])] and "unreadable" in ds.skipped[0][1]
    assert "skipping unreadable sample 1" in caplog.text
    assert ds[1]["id"] == 2 and len(ds.skipped) == 1  # known bad: not read again


def test_all_unreadable_under_skip(tmp_path):
    ds = Listed([sample(tmp_path, "a", 10, readable=False)], on_bad_sample="skip")
    with pytest.raises(DataError, match="no readable sample"):
        ds[0]


def test_no_samples_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match="listed: no samples"):
        Listed([])
    with pytest.raises(ConfigError, match="on_bad_sample"):
        Listed([sample(tmp_path, "a", 1)], on_bad_sample="ignore")
    with pytest.raises(ConfigError, match="questions"):
        Listed([sample(tmp_path, "a", 1)], questions="random")
    with pytest.raises(ConfigError, match="data.bands"):
        Listed([sample(tmp_path, "a", 1)], bands=[1, 2])


def test_a_target_cropped_away_by_augmentation_makes_a_no_target_sample(tmp_path):
    image, mask = tmp_path / "a.png", tmp_path / "a_m.png"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(image)
    label = np.zeros((16, 16), np.uint8)
    label[:2, :2] = 255  # a corner target that a 4x zoom about the centre leaves outside the view
    Image.fromarray(label).save(mask)
    samples = [Sample("a", image, MaskFile(mask), "Where is the corner?", "The top-left corner.", True, "")]
    ds = Listed(samples)
    ds.augment = QuestionAwareAugment(scale=[4.0, 4.0], keep_target=False)
    item = ds.item(0, augment_seed=0)
    assert not item["mask"].any() and item["answer"] == NO_TARGET_ANSWER
    ds.augment = QuestionAwareAugment(scale=[4.0, 4.0])  # keep_target (default): the sample is left as it was
    item = ds.item(0, augment_seed=0)
    assert item["mask"].any() and item["answer"] == "The top-left corner."


def test_a_batch_holds_each_image_once_and_says_which_image_each_question_asks_about(tmp_path):
    a, b = sample(tmp_path, "a", 1), sample(tmp_path, "b", 2)
    (tmp_path / "a_link.png").symlink_to("a.png")  # another name for a's file: the same image
    a_again = Sample("a2", tmp_path / "a_link.png", a.mask, "another question", "", True, "")
    ds = Listed([b, a, a_again, b])
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image_index"].tolist() == [0, 1, 1, 0]
    assert len(batch["question"]) == 4 and len(batch["native_mask"]) == 4
    assert batch["instances"].shape == (4, 8, 8) and batch["instances"].dtype == torch.uint8
    assert torch.equal(batch["instances"], batch["mask"])  # no instance maps: the mask is instance 1
    assert [(t.shape, t.dtype) for t in batch["native_instances"]] == [((8, 8), torch.uint8)] * 4
    torch.testing.assert_close(batch["image"][1], ds[1]["image"])
    # augmented with different draws, one file's samples are different images; with one draw (a grouped item) one
    ds.augment = QuestionAwareAugment(color=1.0)
    assert collate([ds.item(1, augment_seed=0), ds.item(2, augment_seed=1)])["image"].shape[0] == 2
    assert collate([ds.item(1, augment_seed=3), ds.item(2, augment_seed=3)])["image_index"].tolist() == [0, 0]


def instance_sample(tmp_path) -> tuple[Sample, np.ndarray]:
    """A 12x20 sample whose target is three instances (ids 1-3), and its id map."""
    ids = np.zeros((12, 20), np.uint8)
    ids[1:4, 2:6], ids[6:11, 3:5], ids[2:9, 12:19] = 1, 2, 3
    image, mask, instances = tmp_path / "i.png", tmp_path / "i_m.png", tmp_path / "i_ids.png"
    Image.fromarray(np.full((12, 20, 3), 70, np.uint8)).save(image)
    Image.fromarray((ids > 0).astype(np.uint8) * 255).save(mask)
    Image.fromarray(ids).save(instances)
    return Sample("i", image, MaskFile(mask), "Which patches?", "Three.", True, "", InstanceFile(instances)), ids


def test_items_carry_letterboxed_and_native_instance_ids(tmp_path):
    one, ids = instance_sample(tmp_path)
    ds = Listed([one, sample(tmp_path, "a", 1)])
    ds.image_size = 40
    item = ds[0]
    assert item["instances"].shape == (40, 40) and item["instances"].dtype == torch.uint8
    assert item["mask"].dtype == torch.uint8 and torch.equal(item["mask"], (item["instances"] > 0).to(torch.uint8))
    np.testing.assert_array_equal(item["native_instances"].numpy(), ids)
    np.testing.assert_array_equal(item["native_mask"].numpy(), ids > 0)
    assert not item["instances"][:8].any() and not item["instances"][-8:].any()  # 40x24 image, padded 8 and 8
    assert torch.unique(item["instances"]).tolist() == [0, 1, 2, 3]
    batch = collate([ds[0], ds[1]])
    assert batch["instances"].shape == (2, 40, 40)
    assert [t.shape for t in batch["native_instances"]] == [(12, 20), (8, 8)]


@pytest.mark.parametrize(
    "config", [{"hflip": 1.0}, {"vflip": 1.0}, {"rot90": 1.0}, {"scale": [1.3, 1.3]}, {"scale": [0.7, 0.7]}],
    ids=["hflip", "vflip", "rot90", "zoom_in", "zoom_out"],
)
def test_augmentation_moves_the_instance_ids_with_the_mask(tmp_path, config):
    one, ids = instance_sample(tmp_path)
    ds = Listed([one])
    ds.image_size = 20
    ds.augment = QuestionAwareAugment(**config)
    for seed in range(4):
        item = ds.item(0, augment_seed=seed)
        native = item["native_instances"].numpy()
        np.testing.assert_array_equal(item["native_mask"].numpy(), native > 0)
        assert torch.equal(item["mask"], (item["instances"] > 0).to(torch.uint8))
        for k in (1, 2, 3):  # each instance goes where its own mask alone would go
            _, alone, _, _ = ds.augment(np.full((12, 20, 3), 70, np.uint8), ids == k, "q", "", seed)
            np.testing.assert_array_equal(native == k, alone)
