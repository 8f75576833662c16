"""What every dataset format shares: the ``Sample`` record and ``SampleDataset``, which reads, checks and letterboxes.

A format's constructor only indexes its files into ``self.samples``; reading happens in ``__getitem__``.

Bad samples (``on_bad_sample``): with ``'error'`` the first bad entry raises a DataError naming its file. With
``'skip'`` entries found bad while indexing (missing or malformed files, bad annotations) are left out of
``samples`` and listed in ``skipped`` as (file, reason), with one logged warning. A file that only fails when
decoded in ``__getitem__`` is listed too, and the next readable sample is returned in its place with its own
``id``, question and mask, so an item never mixes two samples (an evaluation then counts that sample twice; the
warning says so). Under ``'error'`` nothing is ever returned in place of a bad sample.

``augment`` (None except on a training split, where the data module sets it): each item is augmented on its
native pixels, before letterboxing, so the mask goes through exactly the geometry of the image; the random
draw is seeded from torch's generator, which ``seed_everything`` and the data loader's worker seeding fix.

Instances: a sample's target may be several objects (each building, each field). ``Sample.instances`` names an
id map of them (0 = not a target, 1..n one id per instance); without one the mask is a single instance. The id
map goes through the augmentation and letterboxing in place of the mask, so the mask is always ids > 0.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from framework.core.config import BAD_SAMPLE_MODES, QUESTION_MODES
from framework.core.errors import ConfigError, DataError
from framework.data.augment import QuestionAwareAugment
from framework.data.images import check_bands, check_scale, decode, read_image, read_mask
from framework.data.transforms import letterbox_image, letterbox_mask

log = logging.getLogger(__name__)

NO_TARGET_ANSWER = "There is no target object in the image."


class MaskSource(Protocol):
    """Where a sample's mask comes from; ``str()`` names it in error messages."""

    def read(self) -> np.ndarray:
        """bool [H,W], True = target."""
        ...


@dataclass(frozen=True)
class MaskFile:
    path: Path

    def read(self) -> np.ndarray:
        return read_mask(self.path)

    def __str__(self) -> str:
        return str(self.path)


class InstanceSource(Protocol):
    """Where a sample's instance id map comes from; ``str()`` names it in error messages."""

    def read(self) -> np.ndarray:
        """uint8 [H,W]: 0 = not a target, 1..n = one id per target instance."""
        ...


@dataclass(frozen=True)
class InstanceFile:
    """An 8-bit single-band image (greyscale, or palette indices) whose values are the instance ids."""

    path: Path

    def read(self) -> np.ndarray:
        data = decode(self.path).array
        if data.ndim != 2 or data.dtype != np.uint8:
            raise DataError(f"{self}: an instance map must be 8-bit single-band, got {data.dtype} {data.shape}")
        return np.array(data)  # a writable copy: torch.from_numpy warns on read-only arrays

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Sample:
    stem: str  # names the image in reports; samples that share an image share it
    image: Path
    mask: MaskSource | None  # None: nothing is the target, the mask is all zeros
    question: str
    answer: str  # NO_TARGET_ANSWER when nothing is the target; "" when the format has no answer text
    has_target: bool
    concept: str  # "" when the format names none
    instances: InstanceSource | None = None  # None: the mask is one target instance

    @property
    def image_file(self) -> str:
        """The image file with symlinks resolved: samples that name one image through their own links share it."""
        return os.path.realpath(self.image)


def first_question_only(samples: list[Sample]) -> list[Sample]:
    """The first sample of each (image, mask) pair, in order: ``questions='first'`` for one-line-per-question
    formats."""
    seen: set[tuple[Path, str]] = set()
    kept = []
    for s in samples:
        key = (s.image, str(s.mask))
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


class SampleDataset(Dataset):
    """Base of the registered formats. Items: ``image`` [3,S,S] float in [0,1] letterboxed, ``mask`` [S,S] uint8
    {0,1}, ``instances`` [S,S] uint8 (letterboxed instance ids, 0 outside the image; ``mask`` == ``instances`` > 0),
    ``box`` (top, left, h, w) of the image in the frame, ``question``, ``answer``, ``id`` (= index), ``stem``,
    ``concept``, ``native_mask`` (bool [H0,W0], the mask at the image's own size), ``native_instances`` (uint8
    [H0,W0], the ids at that size) and ``image_key`` (equal for items whose ``image`` is the same: the same file,
    with the same augmentation draw); batch them with ``collate``."""

    def __init__(
        self,
        image_size: int,
        questions: str = "all",
        bands: list[int] | None = None,
        scale: str | float = "auto",
        on_bad_sample: str = "error",
    ) -> None:
        if questions not in QUESTION_MODES:
            raise ConfigError(f"questions: expected one of {', '.join(QUESTION_MODES)}, got {questions!r}")
        if on_bad_sample not in BAD_SAMPLE_MODES:
            raise ConfigError(
                f"data.on_bad_sample: expected one of {', '.join(BAD_SAMPLE_MODES)}, got {on_bad_sample!r}"
            )
        check_bands(bands)
        check_scale(scale)
        self.image_size = image_size
        self.questions = questions
        self.bands = bands
        self.scale = scale
        self.on_bad_sample = on_bad_sample
        self.samples: list[Sample] = []
        self.skipped: list[tuple[str, str]] = []
        self._unreadable: set[int] = set()
        self.augment: QuestionAwareAugment | None = None
        self._last_image: tuple[Path, np.ndarray] | None = None

    @contextmanager
    def entry(self, where: str | Path) -> Iterator[None]:
        """Index one entry: a DataError inside raises (``'error'``) or skips the entry (``'skip'``). Append to
        ``samples`` only at the end of the block, so a skipped entry leaves nothing behind."""
        try:
            yield
        except DataError as exc:
            if self.on_bad_sample == "error":
                raise
            self.skipped.append((str(where), str(exc)))

    def finish_index(self, where: str | Path) -> None:
        """After indexing: warn about skipped entries; no samples at all is a DataError."""
        if self.skipped:
            listed = "; ".join(f"{file}: {reason}" for file, reason in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            log.warning("%s: skipped %d bad entries: %s%s", where, len(self.skipped), listed, more)
        if not self.samples:
            raise DataError(f"{where}: no samples" + (f" ({len(self.skipped)} skipped as bad)" if self.skipped else ""))

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H,W,3], mask bool [H,W]); a mask of another size, or a non-empty mask for a sample
        without target, is a DataError naming the files."""
        image = self._read_image(sample.image)
        if sample.mask is None:
            return image, np.zeros(image.shape[:2], dtype=bool)
        mask = sample.mask.read()
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{sample.mask}: label is {mask.shape[1]}x{mask.shape[0]}, "
                f"image is {image.shape[1]}x{image.shape[0]} ({sample.image})"
            )
        if not sample.has_target and mask.any():
            raise DataError(f"{sample.mask}: the sample has no target (empty answer) but the label is not empty")
        return image, mask

    def load_instances(self, sample: Sample, mask: np.ndarray) -> np.ndarray:
        """uint8 [H,W] instance ids of ``sample``, whose mask (``load``) is ``mask`` bool [H,W]: the mask itself as
        id 1 without an instance source; an id map of another size, or whose ids > 0 are not the mask, is a
        DataError naming its file."""
        if sample.instances is None:
            return mask.astype(np.uint8)
        ids = sample.instances.read()
        if ids.shape != mask.shape:
            raise DataError(
                f"{sample.instances}: instance map is {ids.shape[1]}x{ids.shape[0]}, "
                f"label is {mask.shape[1]}x{mask.shape[0]} ({sample.mask})"
            )
        if not np.array_equal(ids > 0, mask):
            raise DataError(
                f"{sample.instances}: instance ids > 0 differ from the label's mask at "
                f"{int(((ids > 0) != mask).sum())} pixels ({sample.mask})"
            )
        return ids

    def _read_image(self, path: Path) -> np.ndarray:
        """The image's pixels. The last image read is kept, read-only, so that consecutive samples of one image
        (the questions of a grouped training item; evaluation, which lists an image's questions together) decode
        it once."""
        real = Path(os.path.realpath(path))  # samples may name one image through their own symlinks
        if self._last_image is None or self._last_image[0] != real:
            image = read_image(path, self.bands, self.scale)
            image.setflags(write=False)
            self._last_image = (real, image)
        return self._last_image[1]

    def item(self, index: int, augment_seed: int | None = None) -> dict:
        """One letterboxed sample; ``augment_seed`` fixes the augmentation draw (samples of one image augmented
        with one seed get the same geometry and colours), by default it comes from torch's generator."""
        sample = self.samples[index]
        image, mask = self.load(sample)
        instances = self.load_instances(sample, mask)
        question, answer = sample.question, sample.answer
        # samples of one image file share the letterboxed image unless augmented differently
        image_key = sample.image_file
        if self.augment is not None:
            seed = int(torch.randint(2**31, (1,))) if augment_seed is None else augment_seed
            image_key = f"{image_key}#{seed}"
            # the id map moves through the geometry in the mask's place: the mask stays ids > 0
            image, instances, question, answer = self.augment(image, instances, question, answer, seed)
            mask = instances > 0
            if sample.has_target and sample.answer and not mask.any():  # cropped away (augment.keep_target: false)
                answer = NO_TARGET_ANSWER
        pixels, box = letterbox_image(Image.fromarray(image), self.image_size)
        frame_instances = letterbox_mask(instances, self.image_size)  # nearest neighbour: ids stay ids
        return {
            "image": pixels,
            "mask": (frame_instances > 0).to(torch.uint8),
            "instances": frame_instances,
            "box": torch.tensor(box),
            "question": question,
            "answer": answer,
            "id": index,
            "stem": sample.stem,
            "concept": sample.concept,
            "native_mask": torch.from_numpy(mask),  # bool [H0,W0] as trained on; sizes differ: collated as a list
            "native_instances": torch.from_numpy(instances),  # uint8 [H0,W0], likewise a list
            "image_key": image_key,
        }

    def __getitem__(self, index: int, augment_seed: int | None = None) -> dict:
        if self.on_bad_sample == "error":
            return self.item(index, augment_seed)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._unreadable:
                continue
            try:
                return self.item(candidate, augment_seed)
            except DataError as exc:
                self._unreadable.add(candidate)
                self.skipped.append((str(self.samples[candidate].image), str(exc)))
                log.warning(
                    "skipping unreadable sample %d (%s): the next readable sample is returned in its place, so "
                    "an evaluation counts that one twice; fix or remove the file",
                    candidate,
                    exc,
                )
        raise DataError(f"no readable sample: all {len(self)} failed to load (see the warnings)")


def collate(items: list[dict]) -> dict:
    """A batch of B questions about U distinct images: ``image`` [U,3,S,S] (each distinct image once, in order of
    first occurrence), ``image_index`` [B] (the image each question asks about: items with equal ``image_key``
    share one), ``native_mask`` and ``native_instances`` lists of B tensors (their sizes differ), everything else
    ``default_collate``'d (``instances`` [B,S,S] uint8 like ``mask``).
    Items of the image-blind control carry a ``foreign_image`` per image: batched [U,3,S,S] beside ``image``."""
    native = [item.pop("native_mask") for item in items]
    native_instances = [item.pop("native_instances") for item in items]
    keys = [item.pop("image_key") for item in items]
    pixels = [item.pop("image") for item in items]
    foreign = [item.pop("foreign_image") for item in items] if "foreign_image" in items[0] else None
    first: dict[str, int] = {}  # image key -> position of its first item, in order of first occurrence
    for position, key in enumerate(keys):
        first.setdefault(key, position)
    order = {key: n for n, key in enumerate(first)}
    batch = default_collate(items)
    batch["image"] = torch.stack([pixels[position] for position in first.values()])
    if foreign is not None:
        batch["foreign_image"] = torch.stack([foreign[position] for position in first.values()])
    batch["image_index"] = torch.tensor([order[key] for key in keys])
    batch["native_mask"] = native
    batch["native_instances"] = native_instances
    return batch
