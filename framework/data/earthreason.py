"""EarthReason layout: ``<root>/<split>/{images,labels,QAs}``, paired by file stem (never by sorted index).

QA files are JSON (``.json`` or ``.txt``) with ``questions`` (list of str) and ``answer`` (list of str; empty =
no target, and then the label must be empty). Extra keys are kept as metadata (``concept`` is reported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from framework.data.transforms import letterbox_image, letterbox_mask
from framework.errors import DataError
from framework.registry import DATASETS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".png",)
QA_SUFFIXES = (".json", ".txt")
NO_TARGET_ANSWER = "There is no target object in the image."


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    label: Path
    question: str
    answer: str  # NO_TARGET_ANSWER when the QA's answer list is empty
    has_target: bool
    concept: str


def _by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: missing folder (EarthReason layout is <root>/<split>/{{images,labels,QAs}})")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(f"{folder}: two files for stem '{path.stem}': {found[path.stem].name}, {path.name}")
        found[path.stem] = path
    return found


def _read_qa(path: Path) -> dict:
    try:
        qa = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(qa, dict):
        raise DataError(f"{path}: expected a JSON object with 'questions' and 'answer'")
    questions = qa.get("questions")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise DataError(f"{path}: 'questions' must be a non-empty list of non-empty strings")
    answer = qa.get("answer")
    if not isinstance(answer, list) or not all(isinstance(a, str) for a in answer):
        raise DataError(f"{path}: 'answer' must be a list of strings (empty = no target)")
    return qa


@DATASETS.register("earthreason")
class EarthReasonDataset(Dataset):
    """One sample per (image, question): ``questions='all'`` uses every question of an image (training, and
    evaluation over all phrasings), ``'first'`` only ``questions[0]`` (the reference's choice, comparable)."""

    def __init__(self, root: str, split: str, image_size: int, questions: str = "all") -> None:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: data split folder not found")
        images = _by_stem(split_dir / "images", IMAGE_SUFFIXES)
        labels = _by_stem(split_dir / "labels", LABEL_SUFFIXES)
        qas = _by_stem(split_dir / "QAs", QA_SUFFIXES)
        stems = set(images) | set(labels) | set(qas)
        unpaired = sorted(s for s in stems if not (s in images and s in labels and s in qas))
        if unpaired:
            detail = ", ".join(
                f"{s} (missing {'/'.join(n for n, d in (('image', images), ('label', labels), ('QA', qas)) if s not in d)})"
                for s in unpaired[:5]
            )
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            raise DataError(f"{split_dir}: {len(unpaired)} stems lack a partner: {detail}{more}")
        if not stems:
            raise DataError(f"{split_dir}: no samples")
        self.image_size = image_size
        self.samples: list[Sample] = []
        for stem in sorted(stems):
            qa = _read_qa(qas[stem])
            has_target = bool(qa["answer"])
            answer = qa["answer"][0] if has_target else NO_TARGET_ANSWER
            chosen = qa["questions"] if questions == "all" else qa["questions"][:1]
            for q in chosen:
                self.samples.append(
                    Sample(stem, images[stem], labels[stem], q, answer, has_target, str(qa.get("concept", "")))
                )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample: Sample) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and its binary label; a label of another size, or a non-empty label of a no-target
        QA, is a DataError naming the files."""
        try:
            with Image.open(sample.image) as im:
                image = im.convert("RGB")
            with Image.open(sample.label) as lb:
                label = np.asarray(lb.convert("L")) > 0
        except OSError as exc:
            raise DataError(f"{sample.image} / {sample.label}: unreadable ({exc})") from None
        if label.shape != (image.height, image.width):
            raise DataError(
                f"{sample.label}: label is {label.shape[1]}x{label.shape[0]}, image is {image.width}x{image.height}"
            )
        if not sample.has_target and label.any():
            raise DataError(f"{sample.label}: QA says no target (empty 'answer') but the label is not empty")
        return image, label

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image, label = self.load(sample)
        pixels, box = letterbox_image(image, self.image_size)
        return {
            "image": pixels,
            "mask": letterbox_mask(label, self.image_size),
            "box": torch.tensor(box),
            "question": sample.question,
            "answer": sample.answer,
            "id": index,
            "stem": sample.stem,
            "concept": sample.concept,
        }
