"""EarthReason layout: ``<root>/<split>/{images,labels,QAs}``, paired by file stem (never by sorted index).

QA files are JSON (``.json`` or ``.txt``) with ``questions`` (list of str) and ``answer`` (list of str; empty =
no target, and then the label must be empty). Extra keys are kept as metadata (``concept`` is reported).

Optional ``<root>/<split>/instances/<stem>.png``: the sample's target instances as an 8-bit single-band id map
(0 = not a target, 1..n = one id per instance; ids > 0 must cover exactly the label's mask). When the folder
exists every sample needs one; without it the label's mask is one target instance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from framework.core.errors import DataError
from framework.core.registry import DATASETS
from framework.data.samples import NO_TARGET_ANSWER, InstanceFile, MaskFile, Sample, SampleDataset

__all__ = ["NO_TARGET_ANSWER", "EarthReasonDataset"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
QA_SUFFIXES = (".json", ".txt")
INSTANCES_FOLDER = "instances"
INSTANCE_SUFFIXES = (".png",)


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


def _instance_file(instance_maps: dict[str, Path], folder: Path, stem: str) -> InstanceFile:
    if stem not in instance_maps:
        raise DataError(f"{folder / stem}.png: missing instance map (the split has an {INSTANCES_FOLDER} folder)")
    return InstanceFile(instance_maps[stem])


@DATASETS.register("earthreason")
class EarthReasonDataset(SampleDataset):
    """One sample per (image, question): ``questions='all'`` uses every question of an image (training, and
    evaluation over all phrasings), ``'first'`` only ``questions[0]`` (the reference's choice, comparable).
    ``bands``, ``scale``, ``on_bad_sample``: see ``framework.data.images.read_image`` and ``SampleDataset``."""

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
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: data split folder not found")
        found = {
            "image": _by_stem(split_dir / "images", IMAGE_SUFFIXES),
            "label": _by_stem(split_dir / "labels", LABEL_SUFFIXES),
            "QA": _by_stem(split_dir / "QAs", QA_SUFFIXES),
        }
        stems = set().union(*found.values())
        missing = {s: [kind for kind, d in found.items() if s not in d] for s in sorted(stems)}
        unpaired = [s for s, kinds in missing.items() if kinds]
        if unpaired and on_bad_sample == "error":
            detail = ", ".join(f"{s} (missing {'/'.join(missing[s])})" for s in unpaired[:5])
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            raise DataError(f"{split_dir}: {len(unpaired)} stems lack a partner: {detail}{more}")
        self.skipped += [(str(split_dir / s), f"missing {'/'.join(missing[s])}") for s in unpaired]
        instance_dir = split_dir / INSTANCES_FOLDER
        instance_maps = _by_stem(instance_dir, INSTANCE_SUFFIXES) if instance_dir.is_dir() else None
        for stem in sorted(stems - set(unpaired)):
            qa_path = found["QA"][stem]
            with self.entry(qa_path):
                qa = _read_qa(qa_path)
                has_target = bool(qa["answer"])
                answer = qa["answer"][0] if has_target else NO_TARGET_ANSWER
                chosen = qa["questions"] if questions == "all" else qa["questions"][:1]
                mask = MaskFile(found["label"][stem])
                instances = None if instance_maps is None else _instance_file(instance_maps, instance_dir, stem)
                concept = str(qa.get("concept", ""))
                self.samples += [
                    Sample(stem, found["image"][stem], mask, q, answer, has_target, concept, instances)
                    for q in chosen
                ]
        self.finish_index(split_dir)


def prepare_split_folders(out: Path, splits: tuple[str, ...], overwrite: bool, instances: bool = False) -> None:
    """Create ``out/<split>/{images,labels,QAs}``, and ``instances`` when the writer writes instance maps, for
    writers of this layout; a split that already holds files is refused unless ``overwrite``, which empties only
    those four folders (``instances`` always: a stale one would be read as this data's instance maps)."""
    for split in splits:
        folder = out / split
        if folder.is_dir() and any(p.is_file() or p.is_symlink() for p in folder.rglob("*")):
            if not overwrite:
                raise DataError(f"{folder} already contains files; refusing to overwrite them (use overwrite)")
            for sub in ("images", "labels", "QAs", INSTANCES_FOLDER):
                shutil.rmtree(folder / sub, ignore_errors=True)
        for sub in ("images", "labels", "QAs") + ((INSTANCES_FOLDER,) if instances else ()):
            (folder / sub).mkdir(parents=True, exist_ok=True)
