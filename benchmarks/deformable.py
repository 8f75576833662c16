"""Section 4: multi-scale deformable attention, ours (transformers' grid_sample implementation, what the
Mask2Former pixel decoder runs) against the direct reference implementation its tests compare with, at the
shapes of the full-size pixel decoder (the three coarsest Swin-B maps of a 1024² image, 8 heads x 32, 4 points)."""

from __future__ import annotations

import torch
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

from benchmarks.common import Section, Target, peak_rss_mib, reset_peak_rss, rss_mib, seconds
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


def run(size: int, quick: bool) -> Section:
    value, shapes, locations, weights = inputs(size)
    section = Section(
        key="deformable",
        title=f"Multi-scale deformable attention at {size}² ({value.shape[1]} queries, {HEADS} heads x {HEAD_DIM}, "
              f"3 levels x {POINTS} points)" + (" (--quick: reduced size)" if quick else ""),
        columns=["implementation", "seconds", "peak extra RSS MiB", "speed-up vs reference"],
    )
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
    (ours_s, ours_mib), (ref_s, ref_mib) = rows.values()
    for name, (elapsed, extra) in rows.items():
        section.rows.append([name, round(elapsed, 4), round(extra), f"{ref_s / elapsed:.1f}x"])
    difference = (ours - reference).abs().max().item()
    section.data = {"ours_s": ours_s, "reference_s": ref_s, "max_abs_difference": difference}
    section.targets.append(Target("reference time / ours", ref_s / ours_s, 1.0, ">"))
    section.notes.append(f"Both give the same output (max |difference| {difference:.1e}); ours: best of 3 after a "
                         "warm-up; reference: one call.")
    return section
