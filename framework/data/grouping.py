"""Training items that ask several questions of one image (``data.questions_per_image: k``).

A dataset with many questions per image (every phrasing of an EarthReason QA file; the five class questions of a
Dubai image) spends most of a training step re-encoding the same pixels. ``ImageGroups`` makes each training item
``k`` samples of one image, augmented with one shared draw, so their letterboxed images are identical and the
model's encoder, which runs once per distinct image of a batch (``SegEarthModel.encode``), serves all ``k``.

An epoch visits image ``i`` ``ceil(n_i / k)`` times (``n_i`` = its samples); each visit draws ``k`` distinct samples
of the image (all of them when ``n_i < k``), covering as many of its concepts as ``k`` allows, and one augmentation
seed from torch's generator, which ``seed_everything`` and the data loader's worker seeding fix. Samples are drawn at
random per visit, so an epoch sees about, not exactly, every sample once.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch.utils.data import Dataset

from framework.core.errors import ConfigError
from framework.data.samples import SampleDataset, collate


class ImageGroups(Dataset):
    """Items: lists of up to ``k`` sample dicts (as ``SampleDataset`` items) that share one image and one augmentation
    draw. Samples share an image when their image files are the same file (symlinks resolved)."""

    def __init__(self, dataset: SampleDataset, k: int) -> None:
        if k < 1:
            raise ConfigError(f"data.questions_per_image: expected a positive integer, got {k}")
        self.dataset = dataset
        self.k = k
        by_image: dict[str, list[int]] = defaultdict(list)
        for index, sample in enumerate(dataset.samples):
            by_image[sample.image_file].append(index)
        self.images = list(by_image.values())  # sample indices per distinct image, in dataset order
        self.visits = [i for i, members in enumerate(self.images) for _ in range(math.ceil(len(members) / k))]

    def __len__(self) -> int:
        return len(self.visits)

    def __getitem__(self, index: int) -> list[dict]:
        image = self.images[self.visits[index]]
        members = [image[j] for j in torch.randperm(len(image))]
        # spread over the image's concepts first (one per concept, then a second one, ...), so that k questions
        # of a five-class image ask five different things rather than repeat phrasings of one
        seen: dict[str, int] = defaultdict(int)
        rank = []
        for i in members:
            concept = self.dataset.samples[i].concept
            rank.append(seen[concept])
            seen[concept] += 1
        chosen = [members[j] for j in sorted(range(len(members)), key=rank.__getitem__)[: self.k]]
        seed = int(torch.randint(2**31, (1,)))
        return [self.dataset.__getitem__(i, augment_seed=seed) for i in chosen]


def collate_groups(groups: list[list[dict]]) -> dict:
    """One batch of every sample of every group (``collate`` of the flattened list)."""
    return collate([item for group in groups for item in group])
