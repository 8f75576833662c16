"""The assembled model learns: a few hundred CPU steps of a tiny config overfit a handful of samples, through the
task's own loss, for the text-only path and for the path whose visual tokens enter the LLM's prompt."""

from __future__ import annotations

import pytest
import torch

from framework.core.config import with_defaults
from framework.core.model import upsample_logits
from framework.core.readout import chosen_targets
from framework.eval.metrics import matched_ious
from framework.train.matching import instance_masks
from framework.train.task import SegEarthTask
from tests.tiny import TINY_IMAGE_PATH, tiny_config

SIZE = 64
STEPS = 200
QUESTIONS = ("Where is the red square?", "Where is the blue square?")
PATHS = {
    "text only": {},
    "visual tokens": {"compressor": TINY_IMAGE_PATH["compressor"], "llm": TINY_IMAGE_PATH["llm"]},
}


def squares(n_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(images [U,3,S,S], image_index [2U], masks [2U,S,S], questions): on grey noise, a red and a blue square at
    random places in each image; each image is asked for both."""
    g = torch.Generator().manual_seed(0)
    images = 0.4 + 0.1 * torch.rand(n_images, 3, SIZE, SIZE, generator=g)
    masks = torch.zeros(2 * n_images, SIZE, SIZE)
    for i in range(n_images):
        for colour in range(2):
            top, left = (int(v) for v in torch.randint(0, SIZE - 16, (2,), generator=g))
            images[i, :, top : top + 16, left : left + 16] = torch.tensor([0.9, 0.1, 0.1] if colour == 0 else [0.1, 0.1, 0.9])[:, None, None]
            masks[2 * i + colour, top : top + 16, left : left + 16] = 1
    return images, torch.arange(n_images).repeat_interleave(2), masks, list(QUESTIONS) * n_images


def mean_iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    pred = upsample_logits(logits, (SIZE, SIZE)) > 0
    truth = masks.bool()
    return float(((pred & truth).sum((1, 2)) / (pred | truth).sum((1, 2)).clamp(min=1)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("path", list(PATHS))
def test_a_tiny_model_overfits_a_handful_of_samples(path):
    cfg = tiny_config()
    cfg["model"].update(PATHS[path])
    cfg["model"]["mask_head"] = {"name": "fpn", "dim": 16, "query_dim": 32}
    torch.manual_seed(0)
    task = SegEarthTask(with_defaults(cfg))
    images, index, masks, questions = squares(4)
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    task.train()
    losses = []
    for _ in range(STEPS):
        out = task.model(images, questions, index)
        loss = task._loss(out, masks, point_sampled=False)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    task.eval()
    with torch.no_grad():
        iou = mean_iou(task.model(images, questions, index).mask_logits, masks)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # the logits are at a quarter of the masks' resolution, so upsampled edges stay soft and the loss (summed over
    # every deep-supervised prediction) has a floor well above zero: it falls about threefold, not to nothing
    assert last < first / 3, f"{path}: loss {first:.3f} -> {last:.3f}"
    assert iou > 0.9, f"{path}: IoU on the training samples {iou:.3f}"


def red_squares(n_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [U,3,S,S], instance ids [U,S,S]): on grey noise, two red squares apart in each image (ids 1, 2)."""
    g = torch.Generator().manual_seed(1)
    images = 0.4 + 0.1 * torch.rand(n_images, 3, SIZE, SIZE, generator=g)
    ids = torch.zeros(n_images, SIZE, SIZE, dtype=torch.uint8)
    for i in range(n_images):
        for k, half in enumerate((slice(0, SIZE // 2), slice(SIZE // 2, SIZE))):  # one square in each half
            top = int(torch.randint(0, SIZE - 16, (1,), generator=g))
            left = half.start + int(torch.randint(0, SIZE // 2 - 16, (1,), generator=g))
            images[i, :, top : top + 16, left : left + 16] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
            ids[i, top : top + 16, left : left + 16] = k + 1
    return images, ids


@pytest.mark.slow
def test_target_queries_learn_one_mask_per_instance():
    cfg = tiny_config()
    cfg["model"]["mask_head"] = {"name": "fpn", "dim": 16, "query_dim": 32}
    cfg["model"]["readout"] = {"name": "targets", "targets": 4, "level": 1, "layers": 2, "heads": 2}
    torch.manual_seed(0)
    task = SegEarthTask(with_defaults(cfg))
    images, ids = red_squares(4)
    questions, index = ["Where is each red square?"] * 4, torch.arange(4)
    optimizer = torch.optim.AdamW(task.parameters(), lr=3e-3)
    task.train()
    for _ in range(STEPS):
        out = task.model(images, questions, index)
        loss = task._loss(out, (ids > 0).float(), point_sampled=False, instances=ids)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    task.eval()
    with torch.no_grad():
        out = task.model(images, questions, index)
    ious = []
    for row, chosen in enumerate(chosen_targets(out.target_scores, torch.ones(4, dtype=torch.bool))):
        assert len(chosen) == 2, f"image {row}: {len(chosen)} targets chosen, 2 squares"
        pred = upsample_logits(out.target_logits[row, chosen], (SIZE, SIZE)) > 0
        ious.append(matched_ious(pred, instance_masks(ids[row])))
    iou = float(torch.cat(ious).mean())
    assert iou > 0.8, f"per-target matched IoU on the training samples {iou:.3f}"
