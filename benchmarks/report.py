"""The markdown report of a run: the machine, then one table per section with its targets and notes."""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return str(value).replace("|", "\\|")


def table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """``result``: the JSON document ``benchmarks.__main__`` writes."""
    m = result["machine"]
    lines = [
        f"# Benchmarks: {m['host']}, {result['date']} ({result['mode']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads, "
        f"{m['memory_gib']} GiB RAM; load average before {_load(result['load_before'])}, "
        f"after {_load(result['load_after'])}; suite wall time {result['seconds']:.0f} s.",
        "",
        f"Command: `{result['command']}`",
    ]
    if not result["complete"]:
        lines += ["", "**Incomplete: the run was interrupted; the sections below are the ones it finished.**"]
    for section in result["sections"]:
        lines += ["", f"## {section['title']}", ""]
        lines += table(section["columns"], section["rows"])
        if section["targets"]:
            lines.append("")
            for t in section["targets"]:
                mark = "met" if t["met"] else "MISSED"
                lines.append(f"- target {t['name']}: {t['value']:.3g} (needs {t['op']} {t['threshold']:g}): {mark}")
        if section["notes"]:
            lines.append("")
            lines += [f"- {note}" for note in section["notes"]]
        lines.append(f"- section time: {section['seconds']:.0f} s")
    return "\n".join(lines) + "\n"


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)
