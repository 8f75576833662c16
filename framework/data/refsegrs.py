"""RefSegRS layout, ``root`` being the ``RefSegRS`` folder::

    <root>/output_phrase_<split>.txt     one "<id> <phrase>" per line
    <root>/images/<id>.tif
    <root>/masks/<id>.tif                255 = target

Every line is a sample (``questions='first'`` keeps the first line of an id that appears more than once). Any
non-zero mask pixel is target; the reference maps 255 to 1 and leaves every other value as it is, so a stray
value such as 128 would reach its loss unchanged. ``answer`` is empty and ``concept`` unnamed (the format has
neither).
"""

from __future__ import annotations

import re
from pathlib import Path

from framework.core.errors import DataError
from framework.core.registry import DATASETS
from framework.data.samples import MaskFile, Sample, SampleDataset, first_question_only

LINE = re.compile(r"(\d+)\s+(\S.*)")  # matched against the stripped line


@DATASETS.register("refsegrs")
class RefSegRSDataset(SampleDataset):
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
        phrases = base / f"output_phrase_{split}.txt"
        if not phrases.is_file():
            raise DataError(f"{phrases}: RefSegRS phrase file for split '{split}' not found")
        try:
            lines = phrases.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError(f"{phrases}: not UTF-8 text") from None
        samples = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            with self.entry(f"{phrases}:{number}"):
                match = LINE.fullmatch(line.strip())
                if match is None:
                    raise DataError(f"{phrases}:{number}: expected '<id> <phrase>', got {line.strip()[:80]!r}")
                stem, phrase = match.groups()
                image, mask = base / "images" / f"{stem}.tif", base / "masks" / f"{stem}.tif"
                absent = [str(p) for p in (image, mask) if not p.is_file()]
                if absent:
                    raise DataError(f"{phrases}:{number}: {' and '.join(absent)} not found")
                samples.append(Sample(stem, image, MaskFile(mask), phrase, "", True, ""))
        self.samples = samples if questions == "all" else first_question_only(samples)
        self.finish_index(phrases)
