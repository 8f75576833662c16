"""One registry per slot: register components by name, build them from ``{name: ..., **kwargs}``.

Unlike MMEngine's registries, an unknown name fails with the registered names and the closest match,
and keyword arguments are checked against the component's signature before anything is built.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from framework.core.errors import ConfigError
from framework.core.slots import SLOT_NAMES


@dataclass(frozen=True)
class Parameter:
    """One constructor parameter of a registered component, as `segearth components` shows it."""

    name: str
    annotation: str
    default: Any
    required: bool


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "Any"
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The plain types a config value may have for this annotation, or None when not checkable."""
    if annotation in (int, float, bool, str):
        return {int: (int,), float: (int, float), bool: (bool,), str: (str,)}[annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        accepted: list[type] = []
        for arg in typing.get_args(annotation):
            if arg is type(None):
                accepted.append(type(None))
                continue
            inner = _accepted_types(arg)
            if inner is None:
                return None
            accepted.extend(inner)
        return tuple(accepted)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return (list, tuple)
    if origin in (dict, typing.Mapping) or annotation is dict:
        return (dict, Mapping)
    return None


def _type_ok(value: Any, accepted: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in accepted:
        return False  # True is an int to Python, never to a config
    return isinstance(value, accepted)


class Registry:
    """Components of one slot (``encoder``, ``compressor``, ...), by name.

    >>> ENCODERS = Registry("encoder")
    >>> @ENCODERS.register("tiny_cnn")
    ... class TinyCNN(nn.Module): ...
    >>> ENCODERS.build({"name": "tiny_cnn", "width": 8})
    """

    def __init__(self, slot: str) -> None:
        self.slot = slot
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Class decorator that adds a component under ``name``; a name may be registered once."""

        def decorator(obj: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(
                    f"{self.slot} '{name}' is already registered (by {self._entries[name].__module__}."
                    f"{self._entries[name].__qualname__}); pick another name"
                )
            self._entries[name] = obj
            obj.registered_name = name
            return obj

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        """The registered class; an unknown name is a ConfigError that lists the names and the closest one."""
        if name in self._entries:
            return self._entries[name]
        known = ", ".join(self.names()) or "(none)"
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {self.slot} '{name}'{hint} Registered {self.slot}s: {known}")

    def parameters(self, name: str, injected: frozenset[str] = frozenset()) -> list[Parameter]:
        """The parameters a config may set for ``name`` (those the framework injects are left out)."""
        signature = inspect.signature(self.get(name))
        hints = typing.get_type_hints(self.get(name).__init__) if inspect.isclass(self.get(name)) else {}
        out = []
        for p in signature.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in injected:
                continue
            annotation = hints.get(p.name, p.annotation)
            out.append(
                Parameter(
                    name=p.name,
                    annotation=_annotation_text(annotation),
                    default=None if p.default is p.empty else p.default,
                    required=p.default is p.empty,
                )
            )
        return out

    def check(self, cfg: Mapping[str, Any], injected: Mapping[str, Any] | None = None, where: str = "") -> None:
        """Validate ``cfg`` against the signature of the named component without building it."""
        injected = dict(injected or {})
        where = where or self.slot
        if "name" not in cfg:
            raise ConfigError(f"{where}: missing 'name' (one of: {', '.join(self.names())})")
        name = cfg["name"]
        try:
            obj = self.get(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        signature = inspect.signature(obj)
        hints = typing.get_type_hints(obj.__init__) if inspect.isclass(obj) else typing.get_type_hints(obj)
        params = {
            k: p for k, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        settable = [k for k in params if k not in injected]
        for key, value in cfg.items():
            if key == "name":
                continue
            if key in injected:
                raise ConfigError(f"{where}.{key}: set by the framework for {self.slot} '{name}', remove it")
            if key not in params:
                close = difflib.get_close_matches(key, settable, n=1, cutoff=0.5)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{where}.{key}: unknown parameter of {self.slot} '{name}'{hint}; "
                    f"valid: {', '.join(settable) or '(none)'}"
                )
            accepted = _accepted_types(hints.get(key, inspect.Parameter.empty))
            if accepted is not None and not _type_ok(value, accepted):
                raise ConfigError(
                    f"{where}.{key}: expected {_annotation_text(hints[key])}, got {type(value).__name__} {value!r}"
                )
        missing = [
            k for k, p in params.items() if p.default is p.empty and k not in cfg and k not in injected
        ]
        if missing:
            raise ConfigError(f"{where}: {self.slot} '{name}' needs {', '.join(missing)}")

    def build(self, cfg: Mapping[str, Any], where: str = "", **injected: Any) -> Any:
        """Check ``cfg`` and build the component, passing the framework's ``injected`` arguments too."""
        cfg = dict(cfg)
        self.check(cfg, injected, where)
        name = cfg.pop("name")
        try:
            return self.get(name)(**cfg, **injected)
        except (ValueError, RuntimeError) as exc:
            # values of the right type that the component cannot take (a size of 0, heads that do not divide dim)
            given = ", ".join(f"{k}={v!r}" for k, v in cfg.items()) or "its defaults"
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"{where or self.slot}: {self.slot} '{name}' with {given} cannot be built "
                              f"({type(exc).__name__}: {first})") from exc


SLOT_REGISTRIES: dict[str, Registry] = {name: Registry(name) for name in SLOT_NAMES}
ENCODERS = SLOT_REGISTRIES["encoder"]
COMPRESSORS = SLOT_REGISTRIES["compressor"]
LLMS = SLOT_REGISTRIES["llm"]
PROJECTORS = SLOT_REGISTRIES["projector"]
MASK_HEADS = SLOT_REGISTRIES["mask_head"]
DATASETS = Registry("dataset format")
