"""``python -m benchmarks.once_per_image [SIZE] [ROWS]``: what the image pass saves when ROWS questions are asked of
one SIZE² image: the compressor (conv_stride 16) and the Mask2Former pixel decoder at full-size widths, run on ROWS
copies of the image (what a pass per question costs) vs once (``SegEarthModel.see``: once per distinct image)."""

from __future__ import annotations

import sys

import torch

import components  # noqa: F401  (registers every component)
from benchmarks.common import timed
from components.mask_heads.mask2former import Mask2FormerHead
from framework.core.registry import COMPRESSORS

CHANNELS, STRIDES = [128, 256, 512, 1024], [4, 8, 16, 32]  # Swin-B's maps


def main(size: int = 512, rows: int = 4) -> dict[str, float]:
    torch.manual_seed(0)
    head = Mask2FormerHead(in_channels=CHANNELS, strides=STRIDES).eval()
    compressor = COMPRESSORS.build({"name": "conv_stride", "ratio": 16}, in_channels=1024, out_dim=2048).eval()
    one = [torch.randn(1, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES, strict=True)]

    def run(features: list[torch.Tensor]) -> float:
        return timed(lambda: (compressor(features[-1]), head.pixel_features(features)))[1]

    results = {}
    with torch.inference_mode():
        run(one)  # warm-up
        for name, features in [("per question", [f.repeat(rows, 1, 1, 1) for f in one]), ("once", one)]:
            results[name] = run(features)
            print(f"{name}: {results[name]:.2f} s", flush=True)
    return results


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
