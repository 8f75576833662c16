"""One image asked several questions: the image-only parts (every compressor, Mask2Former's pixel decoder) run once
on features expanded over the batch, and give exactly what they give on the same rows copied out, gradients too."""

from __future__ import annotations

import pytest
import torch

import components  # noqa: F401  (registers every component)
from components._broadcast import repeats_one_image
from components.mask_heads.mask2former import Mask2FormerHead
from framework.registry import COMPRESSORS

ROWS = 3


def one_image_rows(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(expanded stride-0 view, the same rows as separate memory) of one random [1,*shape] tensor."""
    one = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    return one.expand(ROWS, *shape), one.repeat(ROWS, *([1] * len(shape)))


def test_only_stride_zero_batches_count_as_one_image() -> None:
    shared, copied = one_image_rows(4, 2, 2)
    assert repeats_one_image(shared) and not repeats_one_image(copied)
    assert not repeats_one_image(shared[:1]) and not repeats_one_image(shared, copied)


@pytest.mark.parametrize("name", COMPRESSORS.names())
def test_compressors_compute_one_image_once(name: str) -> None:
    torch.manual_seed(0)
    compressor = COMPRESSORS.build({"name": name, **COMPRESSORS.get(name).example_config()}, in_channels=8,
                                   out_dim=16)
    shared, copied = one_image_rows(8, 8, 8)
    fast, slow = compressor(shared), compressor(copied)
    assert fast.stride(0) == 0  # computed for one row
    torch.testing.assert_close(fast, slow)
    grads = []
    for out in (fast, slow):
        compressor.zero_grad()
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        grads.append([p.grad.clone() for p in compressor.parameters()])
    for a, b in zip(*grads, strict=True):  # summed over rows in a different order: float tolerance
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


def test_mask2former_decodes_one_images_pixels_once() -> None:
    torch.manual_seed(0)
    head = Mask2FormerHead(in_channels=[8, 16, 24, 32], strides=[4, 8, 16, 32],
                           **Mask2FormerHead.example_config()).eval()
    pairs = [one_image_rows(c, 64 // s, 64 // s) for c, s in zip([8, 16, 24, 32], [4, 8, 16, 32], strict=True)]
    queries = torch.randn(ROWS, 1, 32, generator=torch.Generator().manual_seed(1))  # a different question per row
    with torch.no_grad():
        pixels = head.pixel_features([shared for shared, _ in pairs])
        assert pixels.mask_features.stride(0) == 0
        fast = head([shared for shared, _ in pairs], queries)
        slow = head([copied for _, copied in pairs], queries)
    for a, b in zip([*fast.aux, fast.masks], [*slow.aux, slow.masks], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (fast.masks[0] - fast.masks[1]).abs().max() > 1e-4  # the questions still decide the masks
