import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.errors import ConfigError
from framework.data.augment import QuestionAwareAugment
from framework.data.datamodule import ReasoningDataModule
from framework.data.grouping import ImageGroups
from framework.data.samples import MaskFile, Sample, SampleDataset


class Listed(SampleDataset):
    def __init__(self, samples, image_size=16):
        super().__init__(image_size=image_size)
        self.samples = samples
        self.finish_index("listed")


def image_with_masks(tmp_path, name, n_masks):
    """One random image, ``n_masks`` different masks over it, each sample naming the image through its own symlink
    (as the Dubai converter writes them)."""
    rng = np.random.default_rng(len(name))
    image = tmp_path / f"{name}.png"
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(image)
    samples = []
    for k in range(n_masks):
        mask = tmp_path / f"{name}_{k}.png"
        label = np.zeros((12, 20), np.uint8)
        label[:, 4 * k : 4 * k + 4] = 255
        Image.fromarray(label).save(mask)
        link = tmp_path / f"{name}_{k}_link.png"
        link.symlink_to(image)
        samples.append(Sample(f"{name}_{k}", link, MaskFile(mask), f"question {name} {k}", "", True, ""))
    return samples


def test_groups_share_one_image_and_one_augmentation_draw(tmp_path):
    samples = image_with_masks(tmp_path, "a", 5) + image_with_masks(tmp_path, "bb", 2)
    ds = Listed(samples)
    ds.augment = QuestionAwareAugment(hflip=0.5, vflip=0.5, rot90=0.5, color=1.0, scale=[0.8, 1.2])
    groups = ImageGroups(ds, k=3)
    assert groups.images == [[0, 1, 2, 3, 4], [5, 6]]
    assert len(groups) == 2 + 1  # ceil(5/3) visits of a, ceil(2/3) of bb
    torch.manual_seed(0)
    seen = set()
    for index in range(len(groups)):
        group = groups[index]
        ids = [item["id"] for item in group]
        assert len(ids) == len(set(ids)) == (3 if index < 2 else 2)
        assert {samples[i].stem.split("_")[0] for i in ids} == ({"a"} if index < 2 else {"bb"})
        for item in group[1:]:
            torch.testing.assert_close(item["image"], group[0]["image"], rtol=0, atol=0)
        # each sample keeps its own mask and question: the mask follows the same draw as the image
        for item in group:
            assert item["question"] == samples[item["id"]].question
        assert len({item["mask"].numpy().tobytes() for item in group}) == len(group)
        seen.update(ids)
    assert seen <= set(range(7))


def test_a_group_equals_its_samples_augmented_with_one_seed(tmp_path):
    ds = Listed(image_with_masks(tmp_path, "a", 4))
    ds.augment = QuestionAwareAugment(hflip=0.5, rot90=0.5, color=1.0)
    torch.manual_seed(3)
    group = ImageGroups(ds, k=4)[0]
    torch.manual_seed(3)
    chosen = torch.randperm(4).tolist()
    seed = int(torch.randint(2**31, (1,)))
    for item, index in zip(group, chosen, strict=True):
        alone = ds.item(index, augment_seed=seed)
        assert item["id"] == index
        torch.testing.assert_close(item["mask"], alone["mask"], rtol=0, atol=0)
        torch.testing.assert_close(item["image"], alone["image"], rtol=0, atol=0)


def test_batch_size_must_divide_by_questions_per_image(tmp_path):
    from framework.data.synth import write_synthetic_dataset

    write_synthetic_dataset(tmp_path, n=12, seed=0, image_size=64, samples_per_scene=3)
    cfg = {
        "format": "earthreason", "root": str(tmp_path), "image_size": 64, "batch_size": 6, "eval_batch_size": 4,
        "num_workers": 0, "train_questions": "all", "eval_questions": "first", "train_split": "train",
        "val_split": "val", "test_split": "test", "bands": None, "scale": "auto", "on_bad_sample": "error",
        "augment": None, "questions_per_image": 3,
    }  # fmt: skip
    batch = next(iter(ReasoningDataModule(cfg).train_dataloader()))
    # two distinct images in a batch of six questions: three questions each
    assert len(batch["question"]) == 6 and batch["image"].shape[0] == 2
    assert batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ConfigError, match="must be a positive divisor of data.batch_size"):
        ReasoningDataModule({**cfg, "questions_per_image": 4}).train_dataloader()


def test_a_visit_asks_about_different_concepts_before_repeating_one(tmp_path):
    samples = image_with_masks(tmp_path, "a", 6)
    # three concepts, two phrasings each
    samples = [Sample(s.stem, s.image, s.mask, s.question, "", True, f"c{k % 3}") for k, s in enumerate(samples)]
    groups = ImageGroups(Listed(samples), k=3)
    torch.manual_seed(0)
    for _ in range(10):
        assert sorted(item["concept"] for item in groups[0]) == ["c0", "c1", "c2"]


def test_consecutive_samples_of_one_image_decode_it_once(tmp_path):
    a, b = image_with_masks(tmp_path, "a", 2), image_with_masks(tmp_path, "bb", 1)
    ds = Listed(a + b)
    first = ds._read_image(a[0].image)
    assert ds._read_image(a[1].image) is first  # another symlink to the same file: not decoded again
    assert not first.flags.writeable  # shared between samples: nothing may change it in place
    assert ds._read_image(b[0].image) is not first
    torch.testing.assert_close(ds[1]["image"], Listed(a)[1]["image"], rtol=0, atol=0)
