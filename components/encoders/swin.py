"""Swin Transformer encoder (the reference's Swin-B/12), built from timm's Swin.

Two things differ from timm's classifier and are added here to match the detection Swin the reference uses:

- every stage output goes through its own LayerNorm (``norm0`` .. ``norm3``);
- windows are always full-size and padded *before* the cyclic shift (see ``_PadThenShiftBlock``), so any input
  whose sides are divisible by 32 works and gives the reference's numbers even where the stage grids are not
  multiples of the window (at 1024 px with window 12 none of 256/128/64/32 is).

The module's state dict is timm's Swin state dict (``patch_embed.*``, ``layers.*``) plus ``norm{i}.*``, so
``weights`` is a file with those keys, or with them under ``encoder.`` (the combined file that
``segearth convert mask2former`` writes from a detectron2 Mask2Former ``.pkl``). Checkpoints in the original Swin
layout (downsampling at the end of a stage, as in Mask2Former's detectron2 backbones) load too, with or without
their ``backbone.`` prefix.
"""

from __future__ import annotations

import re

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse
from torch import nn

from components._checkpoint import load_into, read_state_dict
from framework.core.contracts import Encoder
from framework.core.errors import ConfigError
from framework.core.registry import ENCODERS

WHERE = "encoder.weights (swin)"

# variant -> (timm architecture, overrides of its arguments)
VARIANTS: dict[str, tuple[str, dict]] = {
    "nano": ("swin_tiny_patch4_window7_224", {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8)}),
    "tiny": ("swin_tiny_patch4_window7_224", {}),
    "small": ("swin_small_patch4_window7_224", {}),
    "base": ("swin_base_patch4_window7_224", {}),
    "base_w12": ("swin_base_patch4_window12_384", {}),
}


class _PadThenShiftBlock(SwinTransformerBlock):
    """timm's Swin block with the original Swin's order: pad to whole windows, then shift.

    timm shifts first and pads afterwards while its shift mask assumes the padded size, so where a grid is not a
    multiple of the window, tokens wrapped around by the shift share a window (and a mask label) with tokens
    from the opposite border. Padding first keeps every window spatially contiguous, as in the reference.
    """

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,H,W,C] -> [B,H,W,C]."""
        _, height, width, channels = x.shape
        pad_h = (self.window_size[0] - height % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - width % self.window_size[1]) % self.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        _, padded_h, padded_w, _ = x.shape
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, channels)
        windows = self.attn(windows, mask=self.get_attn_mask(x))
        x = window_reverse(windows.view(-1, *self.window_size, channels), self.window_size, padded_h, padded_w)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :height, :width, :].contiguous()


@ENCODERS.register("swin")
class SwinEncoder(Encoder):
    """Swin Transformer: images [B,3,H,W] in [0,1] -> 4 maps [B,C·2^i,H/2^(i+2),W/2^(i+2)], i = 0..3.

    ``variant``: ``tiny``, ``small``, ``base`` (window 7), ``base_w12`` (window 12, the reference's Swin-B), or
    ``nano`` (embed 32, two blocks per stage: a CPU-sized model for tests and smoke runs, no pretrained weights).
    ``drop_path_rate``: stochastic depth, linear over all blocks. ``weights``: optional local state dict.
    """

    def __init__(self, variant: str = "base_w12", drop_path_rate: float = 0.3, weights: str | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ConfigError(f"encoder.variant: unknown swin variant '{variant}'; choose one of {', '.join(VARIANTS)}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"encoder.drop_path_rate: must be in [0, 1), got {drop_path_rate}")
        # always_partition keeps full windows at every stage and input size (the detection Swin's behaviour);
        # strict_img_size=False builds the shift masks per input, so img_size plays no part.
        architecture, overrides = VARIANTS[variant]
        swin = timm.create_model(
            architecture,
            **overrides,
            pretrained=False,
            num_classes=0,
            drop_path_rate=drop_path_rate,
            strict_img_size=False,
            always_partition=True,
        )
        for block in swin.modules():  # timm builds its own blocks; the subclass changes their windowing only
            if type(block) is SwinTransformerBlock:
                block.__class__ = _PadThenShiftBlock
        self.patch_embed = swin.patch_embed
        self.layers = swin.layers
        self.channels = [stage.blocks[0].dim for stage in self.layers]
        self.strides = [4 * 2**i for i in range(len(self.layers))]
        for i, width in enumerate(self.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(width))
        self.register_buffer("mean", torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            load_into(self, _timm_layout(read_state_dict(weights, WHERE, prefix="encoder.")), WHERE, weights)

    @classmethod
    def example_config(cls) -> dict:
        return {"variant": "nano"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's blocks in the backward pass (timm's per-stage ``checkpoint_seq``); the
        framework's ``grad_checkpointing: true`` slot key calls this."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B,3,H,W] in [0,1], H and W divisible by 32 -> list of 4 NCHW maps at strides 4, 8, 16, 32."""
        x = self.patch_embed((images - self.mean) / self.std)  # NHWC
        features = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            features.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return features


def _timm_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a Swin checkpoint in this module's (timm's) layout.

    Keeps only ``backbone.*`` when present (a whole detector checkpoint) and drops the buffers timm rebuilds.
    The original layout puts the patch merging at the end of stage i; timm at the start of stage i + 1.
    """
    if any(key.startswith("backbone.") for key in state_dict):
        state_dict = {key[len("backbone.") :]: v for key, v in state_dict.items() if key.startswith("backbone.")}
    original_layout = "layers.0.downsample.reduction.weight" in state_dict
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if original_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        out[key] = tensor
    return out
