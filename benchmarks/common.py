"""What every section shares: the section record, timing, peak RSS, the machine description."""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Target:
    """A target of the issue, with the measured value and whether it is met (``value`` ``op`` ``threshold``)."""

    name: str
    value: float
    threshold: float
    op: str  # ">=" or "<" or ">"
    met: bool = field(init=False)

    def __post_init__(self) -> None:
        self.met = {">=": self.value >= self.threshold, "<": self.value < self.threshold,
                    ">": self.value > self.threshold}[self.op]


@dataclass
class Section:
    """One table of the report: ``rows`` are lists in the order of ``columns``; ``notes`` explain them."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # extra machine-readable numbers
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds(fn: Callable[[], Any], repeat: int = 1, warmup: int = 0) -> float:
    """Best wall time of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones (the minimum: least disturbed
    by other work on a shared machine)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result of ``fn()``, wall seconds)."""
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) of this process (Linux ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def peak_rss_mib() -> float:
    """Peak resident memory of this process since the last ``reset_peak_rss``, MiB."""
    return _status_kb("VmHWM") / 1024


def rss_mib() -> float:
    return _status_kb("VmRSS") / 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Host, CPU, cores, threads, memory, load and library versions: what the numbers were measured on."""
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(memory_gib, 1),
        "load_average": list(os.getloadavg()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
