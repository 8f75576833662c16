"""The slots, in one table: their names in the order data flows through them, the constructor arguments the framework
injects into each slot's component (a config must not set them) and the options the framework handles itself, with
their defaults (``framework.core.contracts`` says what each means), and the default read-out. Free of torch, so
configs load fast."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class SlotSpec:
    """One slot: its ``name``, the constructor arguments the framework ``injected``, the ``options`` the framework
    handles itself with their defaults, and whether the slot may be ``null`` (``optional``)."""

    name: str
    injected: tuple[str, ...]
    options: Mapping[str, Any]
    optional: bool = False


def _options(**extra: Any) -> Mapping[str, Any]:
    return MappingProxyType({"frozen": False, "grad_checkpointing": False, **extra})


SLOTS: tuple[SlotSpec, ...] = (
    SlotSpec("encoder", (), _options(dtype="float32")),
    SlotSpec("compressor", ("in_channels", "out_dim"), _options(level=-1), optional=True),
    SlotSpec("llm", (), _options()),
    SlotSpec("projector", ("text_dim", "feature_channels", "feature_strides", "out_dim"), _options()),
    SlotSpec("mask_head", ("in_channels", "strides"), _options()),
)
SLOT_NAMES: tuple[str, ...] = tuple(spec.name for spec in SLOTS)
SLOT_SPECS: Mapping[str, SlotSpec] = MappingProxyType({spec.name: spec for spec in SLOTS})
# ``model.readout`` when not given (framework.core.readout): the reference's, the projector's queries ask the head
DEFAULT_READOUT: Mapping[str, Any] = MappingProxyType({"name": "query"})
