"""Import every module of a slot package, so that each component file registers itself on import."""

from __future__ import annotations

import importlib
import pkgutil


def import_all(package_name: str, package_path: list[str]) -> None:
    """Import each non-private module under ``package_path`` (a package's ``__path__``)."""
    for module in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package_name}.{module.name}")
