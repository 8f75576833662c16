"""Section 1: what this machine can do: dense matmul GFLOP/s (fp32, bf16 where the CPU has it) and copy
bandwidth, measured in the same process as everything else so that the ratios of later sections hold."""

from __future__ import annotations

import torch

from benchmarks.common import Section, seconds


def matmul_gflops(n: int, dtype: torch.dtype, repeat: int) -> float:
    """Best GFLOP/s of one [n,n] @ [n,n] product (2 n³ FLOPs)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return 2 * n**3 / seconds(lambda: torch.mm(a, b, out=out), repeat=repeat, warmup=1) / 1e9


def copy_gbps(mib: int, repeat: int) -> float:
    """Best GB/s of copying a ``mib`` MiB fp32 tensor into another (bytes read + bytes written)."""
    source = torch.ones(mib * 2**20 // 4)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / seconds(lambda: target.copy_(source), repeat=repeat, warmup=1) / 1e9


def run(quick: bool) -> Section:
    sizes = [2048] if quick else [1024, 2048, 4096]
    repeat = 3 if quick else 5
    section = Section(
        key="ceiling",
        title="Hardware ceiling",
        columns=["measure", "size", "value", "unit"],
        notes=["The ceiling later sections divide by is the best fp32 matmul rate (GFLOP/s) over the sizes tried."],
    )
    fp32 = {n: matmul_gflops(n, torch.float32, repeat) for n in sizes}
    section.rows += [["matmul fp32", f"{n}³", round(v, 1), "GFLOP/s"] for n, v in fp32.items()]
    bf16 = None
    if torch.cpu._is_avx512_bf16_supported() or torch.cuda.is_available():
        bf16 = {n: matmul_gflops(n, torch.bfloat16, repeat) for n in sizes}
        section.rows += [["matmul bf16", f"{n}³", round(v, 1), "GFLOP/s"] for n, v in bf16.items()]
    else:
        section.notes.append("bf16: this CPU has no AVX512-BF16/AMX, so no bf16 ceiling is measured.")
    mib = 128 if quick else 512
    bandwidth = copy_gbps(mib, repeat)
    section.rows.append(["copy (read + write)", f"{mib} MiB", round(bandwidth, 1), "GB/s"])
    section.data = {
        "fp32_gflops": max(fp32.values()),
        "bf16_gflops": max(bf16.values()) if bf16 else None,
        "copy_gbps": bandwidth,
    }
    return section
