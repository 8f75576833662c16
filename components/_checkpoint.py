"""Reading a local weights file and loading it into a module with clear errors.

Shared by components that accept ``weights:`` (a path to a local state dict). Nothing is ever downloaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from framework.core.errors import ConfigError

_DIRECTORY_FILES = ("model.safetensors", "pytorch_model.bin")


def read_state_dict(path: str, what: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``torch.save`` file, or of ``model.safetensors`` / ``pytorch_model.bin``
    inside a directory. A checkpoint that wraps its tensors in ``{"model": ...}`` or ``{"state_dict": ...}``
    is unwrapped. ``what`` names the component in error messages.

    ``prefix`` (e.g. ``"encoder."``): in a file holding several components' weights under their slot names (as
    ``segearth convert`` writes them) only the keys under it are returned, without it; a file with no key under
    it is returned whole."""
    file = Path(path).expanduser()
    if file.is_dir():
        found = [file / name for name in _DIRECTORY_FILES if (file / name).is_file()]
        if not found:
            raise ConfigError(f"{what}: weights directory {file} holds none of {', '.join(_DIRECTORY_FILES)}")
        file = found[0]
    if not file.is_file():
        raise ConfigError(f"{what}: weights file {file} does not exist")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(file), device="cpu")
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix
        raise ConfigError(f"{what}: cannot read weights {file}: {error}") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError(f"{what}: {file} is not a state dict (a mapping of names to tensors)")
    if prefix is not None and any(key.startswith(prefix) for key in loaded):
        return {key[len(prefix) :]: value for key, value in loaded.items() if key.startswith(prefix)}
    return dict(loaded)


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, source: str) -> None:
    """Copy ``state_dict`` into ``module``: a shape mismatch is a ConfigError naming the key and both shapes;
    missing and unexpected keys are reported with ``warnings.warn`` (the rest still loads)."""
    own = module.state_dict()
    for key, tensor in state_dict.items():
        if key in own and own[key].shape != tensor.shape:
            raise ConfigError(
                f"{what}: weight '{key}' has shape {tuple(tensor.shape)} in {source}, "
                f"the model expects {tuple(own[key].shape)}"
            )
    result = module.load_state_dict(dict(state_dict), strict=False)
    if result.missing_keys:
        warnings.warn(
            f"{what}: {len(result.missing_keys)} weights not in {source} keep their initial values: "
            f"{_preview(result.missing_keys)}",
            stacklevel=3,
        )
    if result.unexpected_keys:
        warnings.warn(
            f"{what}: {len(result.unexpected_keys)} entries of {source} are not used: "
            f"{_preview(result.unexpected_keys)}",
            stacklevel=3,
        )


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
