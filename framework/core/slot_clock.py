"""Where the model's time goes: while a ``SlotClock`` runs, every part of ``SegEarthModel`` it passes through adds
its call, its batch rows and its seconds (``segearth predict --profile``, the benchmarks, the per-slot call tests).

Parts: ``encoder``, ``compressor`` and ``pixel decoder`` (the mask head's ``pixel_features``) count images or
tiles; ``llm``, ``projector``, ``mask decoder`` (the read-out's decoding with the queries) and ``answer text`` (the
LLM's generated answer) count questions.
Outside a running clock ``part(...)`` costs one context-variable read.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

PARTS = ("encoder", "compressor", "pixel decoder", "llm", "projector", "mask decoder", "answer text")
_RUNNING: contextvars.ContextVar[SlotClock | None] = contextvars.ContextVar("segearth_slot_clock", default=None)


@dataclass
class PartTally:
    """One part's calls: ``rows`` per call (batch rows) and their summed wall ``seconds``."""

    rows: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"calls": len(self.rows), "rows": sum(self.rows), "rows_per_call": self.rows,
                "seconds": round(self.seconds, 6)}


class SlotClock:
    """``with SlotClock() as clock: ...`` then ``clock.parts`` (part name -> ``PartTally``) or ``clock.summary()``.
    Inside another clock's block, the innermost clock counts."""

    def __init__(self) -> None:
        self.parts: dict[str, PartTally] = {}
        self._token: contextvars.Token | None = None

    def __enter__(self) -> SlotClock:
        self._token = _RUNNING.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _RUNNING.reset(self._token)

    def add(self, name: str, rows: int, seconds: float) -> None:
        tally = self.parts.setdefault(name, PartTally())
        tally.rows.append(rows)
        tally.seconds += seconds

    def rows(self) -> dict[str, list[int]]:
        """Per part seen, the batch rows of each call."""
        return {name: list(tally.rows) for name, tally in self.parts.items()}

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per part, in model order: calls, rows, rows per call, seconds."""
        return {name: self.parts[name].summary() for name in PARTS if name in self.parts}


@contextmanager
def part(name: str, rows: int) -> Iterator[None]:
    """Times the block as part ``name`` of ``rows`` batch rows on the running clock, if any."""
    clock = _RUNNING.get()
    if clock is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        clock.add(name, rows, time.perf_counter() - start)
