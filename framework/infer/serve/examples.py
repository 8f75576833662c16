"""Example scenes for the page: a few images of each local EarthReason-layout dataset (``data/synth``,
``data/dubai``), each with the questions its QA files ask of it.

These datasets ask several questions of one picture through several samples (one per concept), each with its own
image file (a copy or a symlink); consecutive samples whose files hold the same bytes are one example.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from framework.core.errors import UserError
from framework.data.earthreason import IMAGE_SUFFIXES, QA_SUFFIXES

EXAMPLES_PER_DATASET = 3
SPLIT_ORDER = ("test", "val", "train")  # examples come from the first split present


@dataclass(frozen=True)
class Example:
    """``id`` names it in the API; ``path``: its image file; ``questions``: one per concept its samples ask."""

    id: str
    dataset: str
    name: str
    path: Path
    questions: tuple[str, ...]

    def record(self) -> dict:
        return {"id": self.id, "dataset": self.dataset, "name": self.name, "questions": list(self.questions)}


def _split_of(root: Path) -> Path | None:
    return next((root / s for s in SPLIT_ORDER if (root / s / "images").is_dir()), None)


def dataset_roots(folder: Path) -> list[Path]:
    """``folder`` when it is a dataset root (``<split>/images`` inside), else its sub-folders that are."""
    if not folder.is_dir():
        raise UserError(f"--examples {folder}: not a folder")
    if _split_of(folder) is not None:
        return [folder]
    return [child for child in sorted(folder.iterdir()) if child.is_dir() and _split_of(child) is not None]


def _first_question(qa_folder: Path, stem: str) -> str | None:
    """The first question of the sample's QA file; None when it has none or is unreadable (an example is a
    convenience: a broken file leaves it without a suggestion rather than stopping the server)."""
    for suffix in QA_SUFFIXES:
        path = qa_folder / f"{stem}{suffix}"
        if path.is_file():
            try:
                questions = json.loads(path.read_text(encoding="utf-8")).get("questions")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                return None
            if isinstance(questions, list) and questions and isinstance(questions[0], str):
                return questions[0].strip() or None
            return None
    return None


def examples_of(root: Path, count: int = EXAMPLES_PER_DATASET) -> list[Example]:
    """The first ``count`` distinct images of the dataset at ``root`` (first split of ``SPLIT_ORDER``)."""
    split = _split_of(root)
    if split is None:
        return []
    groups: list[tuple[bytes, list[Path], list[str]]] = []  # (content digest, image files, questions)
    for image in sorted(p for p in (split / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            digest = hashlib.sha1(image.read_bytes()).digest()
        except OSError:  # e.g. a dangling symlink
            continue
        if not groups or groups[-1][0] != digest:
            if len(groups) == count:
                break
            groups.append((digest, [], []))
        groups[-1][1].append(image)
        question = _first_question(split / "QAs", image.stem)
        if question and question not in groups[-1][2]:
            groups[-1][2].append(question)
    examples = []
    for number, (_, images, questions) in enumerate(groups):
        name = os.path.commonprefix([p.stem for p in images]).rstrip("_-") or images[0].stem
        examples.append(Example(f"{root.name}-{number}", root.name, name, images[0], tuple(questions)))
    return examples


def find_examples(folders: Sequence[Path]) -> list[Example]:
    """The examples of every dataset in ``folders`` (each a dataset root or a folder of them)."""
    return [example for folder in folders for root in dataset_roots(folder) for example in examples_of(root)]
