"""A generic manifest of samples: ``<root>/<split>.csv`` (with a header row) or ``<root>/<split>.jsonl`` (one
JSON object per line).

Columns / keys: ``image``, ``mask``, ``question`` (required), ``answer``, ``concept`` (optional); others are
ignored. Paths are relative to the manifest's folder (absolute ones are kept). An empty ``mask`` (JSONL: ``""``
or ``null``) means nothing in the image is the target: the mask is all zeros and an empty ``answer`` becomes
"There is no target object in the image.". With a mask, an empty ``answer`` stays empty (referring-style data).
Every row is a sample; ``questions='first'`` keeps the first row of each (image, mask) pair.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from framework.core.errors import DataError
from framework.core.registry import DATASETS
from framework.data.samples import NO_TARGET_ANSWER, MaskFile, Sample, SampleDataset, first_question_only

REQUIRED = ("image", "mask", "question")
OPTIONAL = ("answer", "concept")


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, row dict or DataError) per CSV record; a header without the required columns raises."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip() for name in next(reader, [])]
        lacking = [c for c in REQUIRED if c not in header]
        if lacking:
            raise DataError(f"{path}:1: missing column(s) {', '.join(lacking)} (header: {', '.join(header)})")
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                yield reader.line_num, DataError(f"{len(fields)} fields where the header has {len(header)}")
            else:
                yield reader.line_num, dict(zip(header, fields))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _jsonl_rows(text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, DataError(f"invalid JSON ({exc.msg})")
            continue
        yield number, row if isinstance(row, dict) else DataError("expected a JSON object")


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"'{key}' must be text, got {type(value).__name__}")
    return value.strip()


def _sample(row: Any, folder: Path) -> Sample:
    if isinstance(row, DataError):
        raise row
    lacking = [k for k in REQUIRED if k not in row]
    if lacking:
        raise DataError(f"missing {', '.join(lacking)}")
    image, mask, question = (_text(row, k) for k in REQUIRED)
    answer, concept = (_text(row, k) for k in OPTIONAL)
    if not image:
        raise DataError("empty image path")
    if not question:
        raise DataError("empty question")
    paths = [folder / image] + ([folder / mask] if mask else [])
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise DataError(f"{' and '.join(absent)} not found")
    stem = Path(image).with_suffix("").as_posix()
    if not mask:
        return Sample(stem, paths[0], None, question, answer or NO_TARGET_ANSWER, False, concept)
    return Sample(stem, paths[0], MaskFile(paths[1]), question, answer, True, concept)


@DATASETS.register("manifest")
class ManifestDataset(SampleDataset):
    def __init__(
        self,
        root: str,
        split: str,
        image_size: int,
        questions: str = "all",
        bands: list[int] | None = None,
        scale: str | float = "auto",
        on_bad_sample: str = "error",
    ) -> None:
        super().__init__(image_size, questions, bands, scale, on_bad_sample)
        base = Path(root)
        found = [p for p in (base / f"{split}.csv", base / f"{split}.jsonl") if p.is_file()]
        if len(found) != 1:
            problem = "both" if found else "neither"
            raise DataError(f"{base}: {problem} of {split}.csv and {split}.jsonl found; the manifest needs exactly one")
        path = found[0]
        try:
            text = path.read_text(encoding="utf-8-sig")  # spreadsheet exports often start with a BOM
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
        rows = _csv_rows(path, text) if path.suffix == ".csv" else _jsonl_rows(text)
        samples = []
        for number, row in rows:
            with self.entry(f"{path}:{number}"):
                try:
                    samples.append(_sample(row, path.parent))
                except DataError as exc:
                    raise DataError(f"{path}:{number}: {exc}") from None
        self.samples = samples if questions == "all" else first_question_only(samples)
        self.finish_index(path)
