"""The LightningDataModule: datasets by registered format, letterboxed batches, the shuffled-question and
image-blind controls. Only the ``train`` stage is augmented (``data.augment``, see ``framework.data.augment``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

import framework.data.formats  # noqa: F401  (registers the built-in formats)
from framework.core.errors import ConfigError, DataError
from framework.core.registry import DATASETS
from framework.data.augment import augment_from_config
from framework.data.grouping import ImageGroups, collate_groups
from framework.data.samples import collate
from framework.data.sampling import training_loader


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) without fixed points (n > 1; n = 1 gives [0])."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for i in range(n):  # move fixed points: swapping with the next position keeps it a permutation
        if perm[i] == i and n > 1:
            j = (i + 1) % n
            perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm.tolist()


class ShuffledQuestions(Dataset):
    """The same samples with questions (and answers) permuted across images by a seeded derangement:
    no sample keeps its own question. A model that reads the question must do worse on this."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.perm = derangement(len(dataset), seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        donor = self.dataset.samples[self.perm[index]]
        item["question"], item["answer"] = donor.question, donor.answer
        return item


class ForeignImages(Dataset):
    """The image-blind control's samples: each item also carries ``foreign_image`` [3,S,S], another image of the
    split, the same for every sample of its own image (a seeded derangement of the split's distinct image files).
    The model takes its visual tokens from it and everything else from the item's own image."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        keys = [sample.image_file for sample in dataset.samples]
        distinct = list(dict.fromkeys(keys))
        if len(distinct) < 2:
            raise DataError("image-blind control: the test split has a single image, so there is no other to use")
        position = {key: n for n, key in enumerate(distinct)}
        first: dict[str, int] = {}  # image -> a sample that shows it
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        perm = derangement(len(distinct), seed)
        self.donor = [first[distinct[perm[position[key]]]] for key in keys]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["foreign_image"] = self.dataset[self.donor[index]]["image"]
        return item


def build_dataset(data_cfg: dict[str, Any], split: str, questions: str, augmented: bool = False) -> Dataset:
    """The registered dataset format of ``data_cfg`` for one split; with ``augmented``, items follow
    ``data_cfg['augment']`` (checked before any file is read)."""
    augment = augment_from_config(data_cfg.get("augment")) if augmented else None
    if not data_cfg.get("root"):
        raise ConfigError("data.root is not set (the folder that holds the dataset)")
    root = Path(data_cfg["root"])
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found")
    cls = DATASETS.get(data_cfg["format"])
    dataset = cls(
        root=str(root),
        split=split,
        image_size=data_cfg["image_size"],
        questions=questions,
        bands=data_cfg["bands"],
        scale=data_cfg["scale"],
        on_bad_sample=data_cfg["on_bad_sample"],
    )
    dataset.augment = augment
    return dataset


class ReasoningDataModule(L.LightningDataModule):
    def __init__(self, data_cfg: dict[str, Any], seed: int = 0, shuffled_control_seed: int = 0) -> None:
        super().__init__()
        self.cfg = data_cfg
        self.seed = seed
        self.shuffled_control_seed = shuffled_control_seed
        self.datasets: dict[str, Dataset] = {}

    def dataset(self, stage: str) -> Dataset:
        """``train``, ``val``, ``test``, ``test_shuffled`` or ``test_image_blind`` (built once, on first use)."""
        if stage not in self.datasets:
            if stage == "test_shuffled":
                self.datasets[stage] = ShuffledQuestions(self.dataset("test"), self.shuffled_control_seed)
            elif stage == "test_image_blind":
                self.datasets[stage] = ForeignImages(self.dataset("test"), self.shuffled_control_seed)
            else:
                split = self.cfg[f"{stage}_split"]
                questions = self.cfg["train_questions"] if stage == "train" else self.cfg["eval_questions"]
                self.datasets[stage] = build_dataset(self.cfg, split, questions, augmented=stage == "train")
        return self.datasets[stage]

    def _loader(self, stage: str, train: bool) -> DataLoader:
        workers = self.cfg["num_workers"]
        dataset, batch_size, collate_fn = self.dataset(stage), self.cfg["eval_batch_size"], collate
        if train:
            k = self.cfg["questions_per_image"]
            if k < 1 or self.cfg["batch_size"] % k:
                raise ConfigError(
                    f"data.questions_per_image: {k} must be a positive divisor of data.batch_size "
                    f"({self.cfg['batch_size']})"
                )
            batch_size = self.cfg["batch_size"] // k
            if k > 1:
                dataset, collate_fn = ImageGroups(dataset, k), collate_groups
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            drop_last=train and len(dataset) > batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            collate_fn=collate_fn,
        )
        # training order: seeded per epoch, the same global batches on any number of processes, resumable mid-epoch
        return training_loader(loader, self.seed, self.trainer) if train else loader

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def shuffled_test_dataloader(self) -> DataLoader:
        return self._loader("test_shuffled", train=False)

    def image_blind_test_dataloader(self) -> DataLoader:
        return self._loader("test_image_blind", train=False)
