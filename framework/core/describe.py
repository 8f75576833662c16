"""Text listing of the registries for ``segearth components``: every component with its parameters."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import components  # noqa: F401  (registers every component)
from framework.core.errors import UserError
from framework.core.readout import READOUTS
from framework.core.registry import SLOT_REGISTRIES, Registry
from framework.core.slots import SLOTS
from framework.core.target import TARGETS


def _describe(name: str, registry: Registry, injected: tuple[str, ...], options: Mapping[str, Any]) -> list[str]:
    lines = [f"{name}:"]
    if options:
        lines.append(f"  (every {name} also takes: " + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")")
    for component in registry.names():
        summary = " ".join((inspect.getdoc(registry.get(component)) or "").split("\n\n")[0].split())
        if len(summary) > 150:
            summary = summary[:149] + "…"
        lines.append(f"  {component}: {summary}")
        for p in registry.parameters(component, frozenset(injected)):
            default = "required" if p.required else f"= {p.default!r}"
            lines.append(f"      {p.name}: {p.annotation} {default}")
    return lines


def describe_components(slot: str | None = None, more: Mapping[str, Registry] | None = None) -> str:
    """Every slot's components and the read-outs (plus the registries in ``more``, e.g. the dataset formats), or
    only ``slot``'s."""
    table: dict[str, tuple[Registry, tuple[str, ...], Mapping[str, Any]]] = {
        spec.name: (SLOT_REGISTRIES[spec.name], spec.injected, spec.options) for spec in SLOTS
    }
    table["readout"] = (READOUTS, ("query_dim",), {})
    table["target_decision"] = (TARGETS, (), {})
    table.update({name: (registry, (), {}) for name, registry in (more or {}).items()})
    if slot is not None and slot not in table:
        raise UserError(f"unknown slot '{slot}'; slots: {', '.join(table)}")
    lines: list[str] = []
    for name, (registry, injected, options) in table.items():
        if slot is None or name == slot:
            lines += _describe(name, registry, injected, options)
    return "\n".join(lines)
