"""Section 3: what visual-token compression buys: LLM-stage and total forward time per compressor, at two input
sizes, on the full-size model (the compressor slot swapped, everything else the same)."""

from __future__ import annotations

import torch

from benchmarks.common import Section, Target, timed
from benchmarks.models import QUESTION, postprocess
from framework.core.errors import DataError
from framework.core.registry import COMPRESSORS

VARIANTS: list[tuple[str, dict]] = [
    ("none", {"name": "none"}),
    ("conv_stride 4", {"name": "conv_stride", "ratio": 4}),
    ("conv_stride 16", {"name": "conv_stride", "ratio": 16}),
    ("conv_stride 64", {"name": "conv_stride", "ratio": 64}),
    ("avg_pool 16", {"name": "avg_pool", "ratio": 16}),
    ("perceiver 64", {"name": "perceiver", "num_tokens": 64}),
]


def best(fn, repeat: int):
    """(result, best seconds of ``repeat`` runs)."""
    out, elapsed = timed(fn)
    for _ in range(repeat - 1):
        elapsed = min(elapsed, timed(fn)[1])
    return out, elapsed


def run(model, sizes: list[int], quick: bool) -> Section:
    section = Section(
        key="compression",
        title="What compression buys" + (" (--quick: reduced model and sizes)" if quick else ""),
        columns=["input", "compressor", "visual tokens", "LLM sequence", "compressor s", "LLM s", "total s",
                 "LLM speed-up vs none"],
    )
    repeat = 2 if quick else 1
    level = model.compressor_level
    original = model.compressor
    results: dict[str, dict[str, dict]] = {}
    try:
        with torch.inference_mode():
            for size in sizes:
                images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
                features, encoder_s = best(lambda: model.encode(images), 1)
                feature = features[level]
                # the stages after the LLM do not depend on the compressor: measured once per size
                llm_out = model.llm([QUESTION], original(feature))
                queries, projector_s = best(lambda: model.projector(llm_out, features), repeat)
                head_out, head_s = best(lambda: model.mask_head(features, queries), repeat)
                _, post_s = best(lambda: postprocess(head_out.masks[:, 0], size, (size, size)), repeat)
                fixed = encoder_s + projector_s + head_s + post_s
                results[str(size)] = {}
                for label, cfg in VARIANTS:
                    torch.manual_seed(0)
                    compressor = COMPRESSORS.build(cfg, where="benchmark compressor", in_channels=feature.shape[1],
                                                   out_dim=model.llm.hidden_size).eval()
                    tokens, compressor_s = best(lambda: compressor(feature), repeat)
                    length = model.llm.prompt_length(QUESTION, tokens.shape[1])
                    row = {"visual_tokens": tokens.shape[1], "sequence": length, "compressor_s": compressor_s}
                    try:
                        _, llm_s = best(lambda: model.llm([QUESTION], tokens), repeat)
                    except DataError:  # longer than the LLM's positions: it cannot read this many tokens
                        row.update(llm_s=None, total_s=None)
                    else:
                        row.update(llm_s=llm_s, total_s=fixed + compressor_s + llm_s)
                    results[str(size)][label] = row
                results[str(size)]["fixed"] = {"encoder_s": encoder_s, "projector_s": projector_s,
                                               "mask_head_s": head_s, "post_s": post_s}
    finally:
        model.compressor = original
    for size in sizes:
        rows = results[str(size)]
        none_llm = rows["none"]["llm_s"]
        for label, _ in VARIANTS:
            r = rows[label]
            ratio = "" if r["llm_s"] is None or none_llm is None else f"{none_llm / r['llm_s']:.1f}x"
            section.rows.append([
                f"{size}²", label, r["visual_tokens"], r["sequence"], round(r["compressor_s"], 3),
                "exceeds positions" if r["llm_s"] is None else round(r["llm_s"], 3),
                "-" if r["total_s"] is None else round(r["total_s"], 2), ratio,
            ])
    first = results[str(sizes[0])]
    section.targets.append(Target(f"LLM stage: none / conv_stride 16 at {sizes[0]}²",
                                  first["none"]["llm_s"] / first["conv_stride 16"]["llm_s"], 6.0, ">="))
    section.data = results
    section.notes += [
        "total s = encoder + compressor + LLM + projector + mask head + post-processing of the same run; the "
        "stages other than compressor and LLM are measured once per input size (they do not depend on it).",
        "LLM sequence = visual tokens + the prompt's text tokens (BPE tokenizer). 'exceeds positions': Phi-1.5 "
        "reads at most 2,048 positions (max_position_embeddings), so that compressor cannot be used at that size.",
    ]
    return section
