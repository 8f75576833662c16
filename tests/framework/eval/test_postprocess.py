"""Undoing the letterbox: a mask letterboxed as the data pipeline does it comes back at the original size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from framework.data.transforms import letterbox_geometry, letterbox_mask
from framework.eval.postprocess import disjoint_masks, resample_to_original, unletterbox, unletterbox_probabilities


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """A binary [H,W] mask of three random ellipses (smooth shapes, as answer regions are)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(3):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        mask |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 < 1
    return mask


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def letterboxed_logits(masks: list[np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """±5 logits [B,size,size] of the letterboxed masks and their boxes [B,4]."""
    frames = torch.stack([letterbox_mask(m, size) for m in masks]).float()
    boxes = torch.tensor([letterbox_geometry(*m.shape, size) for m in masks])
    return frames * 10 - 5, boxes


@pytest.mark.parametrize("shape", [(32, 64), (64, 16), (128, 128)], ids=["landscape", "portrait", "square"])
def test_integer_upscaling_is_recovered_exactly(shape: tuple[int, int]) -> None:
    mask = blobs(*shape, seed=0)
    logits, boxes = letterboxed_logits([mask], 128)
    assert boxes[0, 2] % shape[0] == 0 and boxes[0, 3] % shape[1] == 0  # whole pixel blocks: nearest-compatible
    (recovered,) = unletterbox(logits, boxes, [shape])
    assert recovered.dtype == torch.bool and recovered.shape == shape
    assert torch.equal(recovered, torch.from_numpy(mask))


def test_other_sizes_in_one_batch_at_full_resolution_and_at_stride_4() -> None:
    shapes = [(300, 451), (517, 203)]  # landscape and portrait, neither scale a whole number
    masks = [blobs(*shape, seed=i + 1) for i, shape in enumerate(shapes)]
    logits, boxes = letterboxed_logits(masks, 384)
    assert (boxes[:, :2] > 0).any(dim=1).all()  # both have padding to cut off
    full = unletterbox(logits, boxes, shapes)
    coarse = unletterbox(F.avg_pool2d(logits[:, None], 4)[:, 0], boxes, shapes, frame_size=384)  # [B,96,96]
    for mask, at_frame, at_stride in zip(masks, full, coarse, strict=True):
        truth = torch.from_numpy(mask)
        assert at_frame.shape == at_stride.shape == truth.shape
        assert iou(at_frame, truth) > 0.98
        assert iou(at_stride, truth) > 0.95


def test_padding_is_cut_off() -> None:
    """Logits that are positive only in the padding bands give an empty mask; only inside the box, a full one."""
    top, left, h, w = letterbox_geometry(60, 100, 100)
    inside = torch.full((1, 100, 100), -4.0)
    inside[0, top : top + h, left : left + w] = 4.0
    assert unletterbox(inside, [(top, left, h, w)], [(60, 100)])[0].all()
    assert not unletterbox(-inside, [(top, left, h, w)], [(60, 100)])[0].any()


def test_bool_masks_and_probabilities() -> None:
    shape = (90, 140)
    mask = blobs(*shape, seed=4)
    logits, boxes = letterboxed_logits([mask], 128)
    from_bool = unletterbox(logits > 0, boxes, [shape])[0]
    from_logits = unletterbox(logits, boxes, [shape])[0]
    assert torch.equal(from_bool, from_logits)
    probabilities = unletterbox_probabilities(logits, boxes, [shape])[0]
    assert probabilities.shape == shape and 0 <= probabilities.min() and probabilities.max() <= 1
    assert torch.equal(probabilities > 0.5, from_logits)
    torch.testing.assert_close(probabilities, resample_to_original(logits, boxes, [shape])[0].sigmoid())


def test_mismatched_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="2 maps, 1 boxes"):
        unletterbox(torch.zeros(2, 8, 8), [(0, 0, 8, 8)], [(8, 8), (8, 8)])


def test_disjoint_masks_partition_the_answer_the_more_probable_target_first():
    def rectangle(top, left, bottom, right):
        mask = torch.zeros(10, 10, dtype=torch.bool)
        mask[top:bottom, left:right] = True
        return mask

    first, second = rectangle(0, 0, 5, 5), rectangle(3, 3, 8, 8)
    inside, outside = rectangle(1, 1, 2, 2), rectangle(9, 9, 10, 10)
    kept = disjoint_masks([first, second, inside, outside], rectangle(0, 0, 8, 8))
    # the overlap stays with the first; a target inside an earlier one, or outside the answer, is dropped
    assert [index for index, _ in kept] == [0, 1]
    torch.testing.assert_close(kept[0][1], first)
    torch.testing.assert_close(kept[1][1], second & ~first)
