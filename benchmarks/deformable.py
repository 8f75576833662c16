"""Section 4: multi-scale deformable attention (transformers' grid_sample implementation, what the Mask2Former pixel
decoder runs) at the shapes of the full-size pixel decoder (the three coarsest Swin-B maps of a 1024² image, 8 heads
x 32, 4 points), judged by the memory bandwidth it reaches: the bytes its bilinear gathers read (and its inputs and
output) per second, against a plain copy measured in the same call. The direct reference implementation its tests
compare with runs once beside it, for agreement and time."""

from __future__ import annotations

import torch
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

from benchmarks.ceiling import copy_gbps
from benchmarks.common import Section, peak_rss_mib, reset_peak_rss, rss_mib, seconds
from components.mask_heads._msdeform_reference import multi_scale_deformable_attention_reference

HEADS, HEAD_DIM, POINTS = 8, 32, 4


def inputs(size: int) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """(value, shapes, locations, weights) for a ``size``² image: every position of the stride 8/16/32 maps
    queries 3 levels x 4 points around itself, as in the pixel decoder's encoder."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(size // s, size // s) for s in (8, 16, 32)]
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(1, tokens, HEADS, HEAD_DIM, generator=generator)
    centres = torch.rand(1, tokens, 1, 1, 1, 2, generator=generator)
    offsets = torch.randn(1, tokens, HEADS, len(shapes), POINTS, 2, generator=generator) * 0.02
    locations = centres + offsets
    weights = torch.randn(1, tokens, HEADS, len(shapes) * POINTS, generator=generator).softmax(-1)
    return value, shapes, locations, weights.view(1, tokens, HEADS, len(shapes), POINTS)


def bytes_moved(value: torch.Tensor, shapes: list[tuple[int, int]], points: int) -> int:
    """Bytes one call must move at the least: every sampling point of every query, head and level reads the 4
    neighbours of its bilinear sample (``head_dim`` floats each), reads its location (2 floats) and weight, and the
    output (one ``head_dim`` vector per query and head) is written once."""
    _, queries, heads, head_dim = value.shape
    samples = queries * heads * len(shapes) * points
    floats = samples * (4 * head_dim + 2 + 1) + queries * heads * head_dim
    return floats * value.element_size()


def run(size: int, quick: bool) -> Section:
    value, shapes, locations, weights = inputs(size)
    section = Section(
        key="deformable",
        title=f"Multi-scale deformable attention at {size}² ({value.shape[1]} queries, {HEADS} heads x {HEAD_DIM}, "
              f"3 levels x {POINTS} points)" + (" (--quick: reduced size)" if quick else ""),
        columns=["implementation", "seconds", "peak extra RSS MiB", "GB/s moved", "share of copy bandwidth"],
    )
    moved = bytes_moved(value, shapes, POINTS)
    copy = copy_gbps(128 if quick else 512, repeat=3 if quick else 5)  # the same process, the same minute
    rows = {}
    with torch.inference_mode():
        # the reference is slow enough that one call is not disturbed by first-call effects
        for name, fn, repeat in [("ours (grid_sample, transformers)", multi_scale_deformable_attention, 3),
                                 ("reference (direct gathers)", multi_scale_deformable_attention_reference, 1)]:
            base = rss_mib()
            reset_peak_rss()
            elapsed = seconds(lambda fn=fn: fn(value, shapes, locations, weights), repeat=repeat,
                              warmup=1 if repeat > 1 else 0)
            rows[name] = (elapsed, peak_rss_mib() - base)
        ours = multi_scale_deformable_attention(value, shapes, locations, weights)
        reference = multi_scale_deformable_attention_reference(value, shapes, locations, weights)
    for name, (elapsed, extra) in rows.items():
        rate = moved / elapsed / 1e9
        section.rows.append([name, round(elapsed, 4), round(extra), round(rate, 2), f"{rate / copy:.1%}"])
    section.rows.append(["plain copy (read + write)", "", "", round(copy, 2), "100.0%"])
    (ours_s, _), (ref_s, _) = rows.values()
    difference = (ours - reference).abs().max().item()
    section.data = {"ours_s": ours_s, "reference_s": ref_s, "max_abs_difference": difference, "bytes_moved": moved,
                    "copy_gbps": copy, "bandwidth_share": moved / ours_s / 1e9 / copy}
    section.notes.append(f"GB/s moved: {moved / 1e6:.0f} MB per call (each sampling point reads the 4 neighbours "
                         "of its bilinear sample, its location and its weight; the output is written once), over "
                         "the call's best time. Share: of a plain tensor copy's bandwidth measured in this section.")
    section.notes.append(f"Both give the same output (max |difference| {difference:.1e}); ours: best of 3 after a "
                         "warm-up; reference: one call.")
    return section
