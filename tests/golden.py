"""Golden-output helpers (open_clip style): fixed weights, fixed inputs, a few summary numbers per output."""

from __future__ import annotations

import pytest
import torch


def set_weights(module: torch.nn.Module, seed: int) -> None:
    """Weights from a fixed generator, independent of library init, so golden values track the forward only."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(noise / param[0].numel() ** 0.5 if param.ndim > 1 else 0.1 * noise)


def summary(tensor: torch.Tensor) -> list[float]:
    """mean, mean |x|, rms and the first, middle and last value."""
    flat = tensor.detach().double().flatten()
    rms = flat.square().mean().sqrt().item()
    return [flat.mean().item(), flat.abs().mean().item(), rms, *flat[[0, flat.numel() // 2, -1]].tolist()]


def assert_golden(tensor: torch.Tensor, golden: list[float]) -> None:
    values = summary(tensor)
    assert values == pytest.approx(golden, rel=1e-4, abs=1e-4 * values[2])
