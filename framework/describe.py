"""Text listing of the registries for ``segearth components``."""

from __future__ import annotations

import inspect

from framework.errors import UserError
from framework.model import FRAMEWORK_KEYS, INJECTED
from framework.registry import DATASETS, SLOTS


def describe_components(slot: str | None = None) -> str:
    import components  # noqa: F401  (registers every component)
    import framework.data.formats  # noqa: F401  (registers the built-in dataset formats)

    registries = {**SLOTS, "dataset": DATASETS}
    if slot is not None and slot not in registries:
        raise UserError(f"unknown slot '{slot}'; slots: {', '.join(registries)}")
    lines: list[str] = []
    for name, registry in registries.items():
        if slot is not None and name != slot:
            continue
        lines.append(f"{name}:")
        injected = frozenset(INJECTED.get(name, ()))
        options = FRAMEWORK_KEYS.get(name, {})
        if options:
            lines.append("  (every " + name + " also takes: " + ", ".join(f"{k}={v!r}" for k, v in options.items()) + ")")
        for component in registry.names():
            summary = " ".join((inspect.getdoc(registry.get(component)) or "").split("\n\n")[0].split())
            if len(summary) > 150:
                summary = summary[:149] + "…"
            lines.append(f"  {component}: {summary}")
            for p in registry.parameters(component, injected):
                default = "required" if p.required else f"= {p.default!r}"
                lines.append(f"      {p.name}: {p.annotation} {default}")
    return "\n".join(lines)
