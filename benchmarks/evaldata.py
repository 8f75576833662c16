"""Section 7: evaluation and data. The evaluator's throughput on 1024² masks (the metric alone, and from head
logits as validation does it), and the training data pipeline (read, question-aware augmentation, letterbox to
[0,1] floats, collate) in images/s with 0 and 2 loader workers, against the demo's training step."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from benchmarks.common import Section, Target, seconds, timed
from framework.core.model import upsample_logits
from framework.data.datamodule import build_dataset
from framework.data.samples import collate
from framework.data.synth import write_synthetic_dataset
from framework.data.transforms import box_mask
from framework.eval.metrics import ReasoningSegMetrics

AUGMENT = {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "color": 0.3, "scale": [0.8, 1.2]}
DATA_DEFAULTS = {"format": "earthreason", "bands": None, "scale": "auto", "on_bad_sample": "error",
                 "augment": AUGMENT}


def evaluator_rate(size: int, batch: int, batches: int) -> dict[str, float]:
    """Masks/s of ``ReasoningSegMetrics`` on [batch,size,size] masks: ``update`` alone, and logits at stride 4
    upsampled, thresholded and scored with the letterbox's valid region (``SegEarthTask._evaluate``'s path)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, size // 4, size // 4, generator=generator)
    target = torch.rand(batch, size, size, generator=generator) > 0.5
    pred = torch.rand(batch, size, size, generator=generator) > 0.5
    ids = torch.arange(batch)
    boxes = torch.tensor([[0, 0, size, size]] * batch)
    metric = ReasoningSegMetrics()

    def update() -> None:
        for _ in range(batches):
            metric.update(pred, target, ids)

    def from_logits() -> None:
        for _ in range(batches):
            scored = upsample_logits(logits, (size, size)) > 0
            metric.update(scored, target, ids, box_mask(boxes, size))

    rates = {}
    for name, fn in (("update", update), ("from_logits", from_logits)):
        metric.reset()
        rates[name] = batch * batches / seconds(fn, repeat=2, warmup=0)
    metric.reset()
    update()
    _, compute_s = timed(metric.compute)
    rates["compute_s"] = compute_s
    return rates


def loader_rate(root: Path, image_size: int, workers: int, images: int, batch: int = 8) -> float:
    """Images/s of the augmented training pipeline (after the first batch, so worker start-up is not counted)."""
    data_cfg = dict(DATA_DEFAULTS, root=str(root), image_size=image_size)
    dataset = build_dataset(data_cfg, "train", "all", augmented=True)
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch, sampler=RandomSampler(dataset, replacement=True,
                        num_samples=images + batch), num_workers=workers, collate_fn=collate)
    iterator = iter(loader)
    next(iterator)

    def drain() -> None:
        for _ in iterator:
            pass

    return images / seconds(drain)


def run(quick: bool, demo_samples_per_s: float | None) -> Section:
    section = Section(
        key="evaldata",
        title="Evaluation and data loading" + (" (--quick: fewer images)" if quick else ""),
        columns=["what", "size", "setting", "throughput", "unit"],
    )
    evaluator = evaluator_rate(1024, batch=4 if quick else 8, batches=2 if quick else 5)
    section.rows += [
        ["evaluator: metric update", "1024²", "bool masks", round(evaluator["update"], 1), "masks/s"],
        ["evaluator: logits -> metric", "1024²", "stride-4 logits, upsample + threshold + valid region",
         round(evaluator["from_logits"], 1), "masks/s"],
    ]
    loaders: dict[str, float] = {}
    settings = [(256, 256, 0), (256, 256, 2)] if quick else [(256, 256, 0), (256, 256, 2), (1024, 1024, 0),
                                                             (1024, 1024, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for native in sorted({s[0] for s in settings}):
            root = Path(tmp) / str(native)
            write_synthetic_dataset(root, n=6 if quick or native > 256 else 12, seed=0, image_size=native)
        for native, size, workers in settings:
            images = (16 if quick else 48) if native <= 256 else (8 if quick else 24)
            rate = loader_rate(Path(tmp) / str(native), size, workers, images)
            loaders[f"{native}->{size} w{workers}"] = rate
            section.rows.append(["data: read + augment + letterbox + collate", f"{native}² -> {size}²",
                                 f"{workers} workers", round(rate, 1), "images/s"])
    if demo_samples_per_s is not None:
        section.rows.append(["demo training step (section 5)", "256²", "batch 8" if not quick else "batch 2",
                             round(demo_samples_per_s, 1), "samples/s"])
        section.targets.append(Target("data loading (0 workers, 256²) / demo training step, samples/s",
                                      loaders["256->256 w0"] / demo_samples_per_s, 1.0, ">="))
    section.data = {"evaluator": evaluator, "loaders": loaders, "demo_samples_per_s": demo_samples_per_s}
    section.notes.append("Data: synthetic scenes (framework.data.synth) written to a temporary folder; augmentation "
                         f"{AUGMENT}. Loader rates exclude the first batch (worker start-up).")
    return section
