"""The house's dependency rules, read from the source: every import (at the top of a module or inside a function) of
``framework`` and ``components``, walked with ``ast``. Imports point one way, cli -> train | infer | sweep ->
core | data | eval | track, and no module imports itself round a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("framework", "components")

# what each part of the house may import (besides itself); "components": the registration entry ``import components``
ALLOWED = {
    "core": {"components"},
    "data": {"core"},
    "eval": {"core", "data"},
    "track": {"core", "data", "eval"},
    "train": {"core", "data", "eval", "track"},
    "infer": {"core", "data", "eval", "track"},
    "sweep": {"core", "track"},
    "cli": {"core", "data", "eval", "track", "train", "infer", "sweep"},
    "framework": {"infer"},  # the package's lazy ``load_model``
}
# a component knows only its contract: these modules of the framework (and the position codes it shares with the
# read-outs), and other components
COMPONENT_ALLOWED = {"framework.core.contracts", "framework.core.registry", "framework.core.errors",
                     "framework.core.positions"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, anywhere in it (``from a import b`` names module ``a.b`` when it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) & known for name, path in found.items()}


def part(module: str) -> str:
    """``components``, ``framework`` (its own ``__init__``) or the framework package the module belongs to."""
    parts = module.split(".")
    return parts[0] if parts[0] == "components" or len(parts) == 1 else parts[1]


def test_the_walk_sees_the_house():
    edges = graph()
    assert {part(m) for m in edges} == set(ALLOWED) | {"components"}
    assert "framework.core.contracts" in edges["components.mask_heads.fpn"]
    assert "framework.train.task" in edges["framework.train.fit"]  # a top-level import
    assert "framework.train.fit" in edges["framework.cli.fit"]  # an import inside a function


def test_imports_follow_the_layering():
    wrong = []
    for module, targets in graph().items():
        source = part(module)
        for target in targets:
            if source == "components":
                if part(target) != "components" and target not in COMPONENT_ALLOWED:
                    wrong.append(f"{module} -> {target}")
            elif part(target) != source and part(target) not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
            elif part(target) == "components" and target != "components":
                wrong.append(f"{module} -> {target} (the framework imports components only to register them)")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [({"a": {"b"}, "b": {"c"}, "c": set()}, []), ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]), ({"a": {"a"}}, [["a"]])],
)
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert cycles(edges) == expected
