import logging

import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ConfigError, DataError
from framework.data.augment import QuestionAwareAugment
from framework.data.samples import NO_TARGET_ANSWER, MaskFile, Sample, SampleDataset, collate


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
    torch.testing.assert_close(batch["image"][1], ds[1]["image"])
    # augmented with different draws, one file's samples are different images; with one draw (a grouped item) one
    ds.augment = QuestionAwareAugment(color=1.0)
    assert collate([ds.item(1, augment_seed=0), ds.item(2, augment_seed=1)])["image"].shape[0] == 2
    assert collate([ds.item(1, augment_seed=3), ds.item(2, augment_seed=3)])["image_index"].tolist() == [0, 0]
