"""Checks of a compressor's ``ratio`` (input positions per visual token)."""

from __future__ import annotations

import math

from framework.core.errors import ConfigError


def square_side(ratio: int, where: str) -> int:
    """k for ratio = k*k (k >= 1), else ConfigError."""
    side = math.isqrt(ratio) if isinstance(ratio, int) and ratio >= 1 else 0
    if side * side != ratio or side == 0:
        raise ConfigError(f"{where}: ratio {ratio!r} must be a perfect square k*k >= 1 (1, 4, 9, 16, ...)")
    return side


def halvings(ratio: int, where: str) -> int:
    """n for ratio = 4**n (n >= 1): how many stride-2 steps give that many positions per token, else ConfigError."""
    steps = 0
    value = ratio if isinstance(ratio, int) else 0
    while value > 1 and value % 4 == 0:
        value //= 4
        steps += 1
    if value != 1 or steps == 0:
        raise ConfigError(
            f"{where}: ratio {ratio!r} must be a power of 4 >= 4 (4, 16, 64, ...); "
            "for one token per position use compressor 'none'"
        )
    return steps
