"""``segearth convert``: pretrained checkpoints of other code bases as files our components' ``weights:`` load.

``mask2former``: an original Mask2Former (detectron2) checkpoint, as the reference initialises from (its Swin
backbone, pixel decoder and transformer decoder; reference notes §1.1, §1.6), becomes one file holding the ``swin``
encoder's state dict under ``encoder.`` and the ``mask2former`` head's under ``mask_head.``; point both
``model.encoder.weights`` and ``model.mask_head.weights`` at it. Every source tensor is either renamed by a rule
below or dropped by a rule that says why; anything else stops the conversion, so a checkpoint of another
architecture (e.g. a ResNet backbone) is refused instead of half-converted.
"""

from __future__ import annotations

import argparse
import pickle
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framework.errors import ConfigError

SUFFIXES_IN = (".pkl", ".pth", ".pt")
SUFFIXES_OUT = (".safetensors", ".pth", ".pt")
QKV = ("q", "k", "v")  # order of the three blocks of an nn.MultiheadAttention in_proj


@dataclass(frozen=True)
class Rule:
    """A source key (full match of ``pattern``) -> ``target`` (``re`` template or function of the match), or
    dropped for ``reason`` when there is no target. ``split``: the tensor stacks q, k, v (an
    ``nn.MultiheadAttention`` in_proj) and becomes three tensors, ``{part}`` in the target naming each."""

    pattern: re.Pattern[str]
    target: str | Callable[[re.Match[str]], str] | None = None
    reason: str | None = None
    split: bool = False


def _rule(pattern: str, target: str | Callable[[re.Match[str]], str] | None = None, *, reason: str | None = None,
          split: bool = False) -> Rule:
    assert (target is None) != (reason is None), "a rule renames (target) or drops (reason)"
    return Rule(re.compile(pattern), target, reason, split)


_P = r"(weight|bias)"
_BACKBONE = r"backbone\."
_PIXEL = r"sem_seg_head\.pixel_decoder\."
_PRED = r"sem_seg_head\.predictor\."
_ENC_LAYER = _PIXEL + r"transformer\.encoder\.layers\.(\d+)\."
_DEC = "mask_head.decoder.layers."

# detectron2 Mask2Former (Swin backbone) -> swin encoder (timm layout) and mask2former head (transformers' parts).
MASK2FORMER_RULES: tuple[Rule, ...] = (
    # Swin: the original layout merges patches at the end of stage i, timm at the start of stage i + 1
    _rule(_BACKBONE + r"patch_embed\.(proj|norm)\." + _P, r"encoder.patch_embed.\1.\2"),
    _rule(_BACKBONE + r"layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\." + _P,
          r"encoder.layers.\1.blocks.\2.\3.\4"),
    _rule(_BACKBONE + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
          r"encoder.layers.\1.blocks.\2.attn.relative_position_bias_table"),
    _rule(_BACKBONE + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index",
          reason="index buffers the encoder computes itself"),
    _rule(_BACKBONE + r"layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
          lambda m: f"encoder.layers.{int(m[1]) + 1}.downsample.{m[2]}"),
    _rule(_BACKBONE + r"norm(\d)\." + _P, r"encoder.norm\1.\2"),
    # pixel decoder: deformable-attention encoder over the 3 coarsest maps (coarsest first), FPN lateral + output
    _rule(_PIXEL + r"input_proj\.(\d+)\.([01])\." + _P, r"mask_head.pixel_decoder.input_projections.\1.\2.\3"),
    _rule(_PIXEL + r"transformer\.level_embed", "mask_head.pixel_decoder.level_embed"),
    _rule(_ENC_LAYER + r"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\." + _P,
          r"mask_head.pixel_decoder.encoder.layers.\1.self_attn.\2.\3"),
    _rule(_ENC_LAYER + r"norm1\." + _P, r"mask_head.pixel_decoder.encoder.layers.\1.self_attn_layer_norm.\2"),
    _rule(_ENC_LAYER + r"linear([12])\." + _P, r"mask_head.pixel_decoder.encoder.layers.\1.fc\2.\3"),
    _rule(_ENC_LAYER + r"norm2\." + _P, r"mask_head.pixel_decoder.encoder.layers.\1.final_layer_norm.\2"),
    _rule(_PIXEL + r"mask_features\." + _P, r"mask_head.pixel_decoder.mask_projection.\1"),
    _rule(_PIXEL + r"(adapter|layer)_(\d+)\.weight", r"mask_head.pixel_decoder.\1_\2.0.weight"),
    _rule(_PIXEL + r"(adapter|layer)_(\d+)\.norm\." + _P, r"mask_head.pixel_decoder.\1_\2.1.\3"),
    # transformer decoder: transformers keeps nn.MultiheadAttention for the masked cross-attention only
    _rule(_PRED + r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_" + _P,
          _DEC + r"\1.self_attn.{part}_proj.\2", split=True),
    _rule(_PRED + r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\." + _P,
          _DEC + r"\1.self_attn.out_proj.\2"),
    _rule(_PRED + r"transformer_self_attention_layers\.(\d+)\.norm\." + _P, _DEC + r"\1.self_attn_layer_norm.\2"),
    _rule(_PRED + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|"
          r"out_proj\.weight|out_proj\.bias)", _DEC + r"\1.cross_attn.\2"),
    _rule(_PRED + r"transformer_cross_attention_layers\.(\d+)\.norm\." + _P, _DEC + r"\1.cross_attn_layer_norm.\2"),
    _rule(_PRED + r"transformer_ffn_layers\.(\d+)\.linear([12])\." + _P, _DEC + r"\1.fc\2.\3"),
    _rule(_PRED + r"transformer_ffn_layers\.(\d+)\.norm\." + _P, _DEC + r"\1.final_layer_norm.\2"),
    _rule(_PRED + r"decoder_norm\." + _P, r"mask_head.decoder.layernorm.\1"),
    _rule(_PRED + r"mask_embed\.layers\.(\d+)\." + _P, r"mask_head.decoder.mask_predictor.mask_embedder.\1.0.\2"),
    _rule(_PRED + r"level_embed\.weight", "mask_head.level_embed.weight"),
    _rule(_PRED + r"(query_feat|query_embed)\.weight",
          reason="learned object queries (the description embedding is the query here)"),
    _rule(_PRED + r"class_embed\." + _P, reason="COCO class head (no class head here)"),
    _rule(r"criterion\.empty_weight", reason="loss weights of COCO training"),
)


@dataclass
class Conversion:
    """``tensors``: the converted state dict; ``mapped``: source keys that went into it; ``discarded``: source
    keys dropped, by reason."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    mapped: list[str] = field(default_factory=list)
    discarded: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        """Counts per slot prefix and the discarded keys, layer indices collapsed to ``*``."""
        slots = Counter(key.split(".", 1)[0] for key in self.tensors)
        n_discarded = sum(len(keys) for keys in self.discarded.values())
        lines = [
            f"{len(self.tensors)} tensors ({', '.join(f'{slot} {n}' for slot, n in slots.items())}) from "
            f"{len(self.mapped) + n_discarded} source tensors: {len(self.mapped)} converted, {n_discarded} discarded"
        ]
        for reason, keys in self.discarded.items():
            patterns = dict.fromkeys(re.sub(r"\.\d+(?=\.)", ".*", key) for key in keys)
            lines.append(f"  discarded {len(keys)}, {reason}: {', '.join(patterns)}")
        return "\n".join(lines)


def convert(state: Mapping[str, torch.Tensor], rules: tuple[Rule, ...], source: str) -> Conversion:
    """Apply ``rules`` to every key of ``state``; a key no rule matches is a ConfigError listing all such keys."""
    out = Conversion()
    unmatched = []
    for key, tensor in state.items():
        found = next(((r, m) for r in rules if (m := r.pattern.fullmatch(key))), None)
        if found is None:
            unmatched.append(key)
            continue
        rule, match = found
        if rule.target is None:
            out.discarded.setdefault(str(rule.reason), []).append(key)
            continue
        target = rule.target(match) if callable(rule.target) else match.expand(rule.target)
        if rule.split:
            width = _attention_width(state, key, tensor)
            expected = (3 * width, width) if tensor.dim() == 2 else (3 * width,)
            if tuple(tensor.shape) != expected:
                raise ConfigError(
                    f"{source}: '{key}' has shape {tuple(tensor.shape)}, expected {expected} "
                    f"(q, k, v stacked for attention width {width})"
                )
            for part, block in zip(QKV, tensor.chunk(3, dim=0), strict=True):
                out.tensors[target.replace("{part}", part)] = block.clone()
        else:
            out.tensors[target] = tensor
        out.mapped.append(key)
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (f", ... ({len(unmatched) - 10} more)" if len(unmatched) > 10 else "")
        raise ConfigError(
            f"{source}: {len(unmatched)} tensor(s) neither converted nor known to be unused "
            f"(a different architecture?): {shown}"
        )
    return out


def _attention_width(state: Mapping[str, torch.Tensor], in_proj_key: str, tensor: torch.Tensor) -> int:
    """Width C of the attention an in_proj tensor belongs to: from its out_proj [C,C] when the source has it."""
    out_proj = state.get(re.sub(r"in_proj_(weight|bias)$", "out_proj.weight", in_proj_key))
    if out_proj is not None:
        return out_proj.shape[0]
    return tensor.shape[-1] if tensor.dim() == 2 else tensor.shape[0] // 3


# ---------------------------------------------------------------------------------------------- reading, writing
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a ``.pkl`` from the internet runs no code of its own."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
        ("collections", "OrderedDict"),
        *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
        *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are expected)")
        return super().find_class(module, name)


def read_detectron2_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a detectron2 checkpoint: a ``.pkl`` (``{"model": {name: ndarray}, ...}``, as the model zoo
    ships them) or a ``torch.save`` file (``{"model": state_dict, ...}``, as detectron2 training writes them)."""
    if path.suffix not in SUFFIXES_IN:
        raise ConfigError(f"{path}: expected a detectron2 checkpoint ({', '.join(SUFFIXES_IN)})")
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint file does not exist")
    try:
        if path.suffix == ".pkl":
            with path.open("rb") as f:
                loaded = _ArrayUnpickler(f, encoding="latin1").load()
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file is the user's to fix
        raise ConfigError(f"{path}: cannot read checkpoint: {error}") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path}: not a checkpoint (expected a mapping of names to arrays)")
    tensors = {}
    for key, value in loaded.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"{path}: '{key}' is a {type(value).__name__}, not an array")
        tensors[key] = value
    return tensors


def write_state_dict(tensors: dict[str, torch.Tensor], path: Path, overwrite: bool = False) -> None:
    """``.safetensors`` or a ``torch.save`` file (``.pth``/``.pt``) of ``tensors``."""
    if path.suffix not in SUFFIXES_OUT:
        raise ConfigError(f"{path}: the output must be one of {', '.join(SUFFIXES_OUT)}")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists (use --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {key: tensor.contiguous() for key, tensor in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(contiguous, str(path))
    else:
        torch.save(contiguous, path)


def convert_mask2former(src: str | Path, dst: str | Path, overwrite: bool = False) -> Conversion:
    """Convert a detectron2 Mask2Former (Swin) checkpoint ``src`` into ``dst``; see the module docstring."""
    src, dst = Path(src), Path(dst)
    conversion = convert(read_detectron2_checkpoint(src), MASK2FORMER_RULES, str(src))
    write_state_dict(conversion.tensors, dst, overwrite)
    return conversion


# ---------------------------------------------------------------------------------------------- command line
def cmd_convert_mask2former(args: argparse.Namespace) -> None:
    conversion = convert_mask2former(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.dst}: {conversion.summary()}")
    print(f"use it as model.encoder.weights={args.dst} model.mask_head.weights={args.dst}")


def add_convert_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` (with one sub-command per source format) to the ``segearth`` sub-commands."""
    parser = subparsers.add_parser(
        "convert",
        help="convert pretrained checkpoints of other code bases into weights files for our components",
        description="Convert pretrained checkpoints of other code bases into weights files for our components.",
    )
    formats = parser.add_subparsers(dest="convert_format", required=True, metavar="FORMAT")
    m2f = formats.add_parser(
        "mask2former",
        help="a detectron2 Mask2Former (Swin) checkpoint -> swin encoder + mask2former head weights",
        description=(
            "Convert an original Mask2Former (detectron2) checkpoint with a Swin backbone, e.g. the model zoo's "
            "model_final_54b88a.pkl the reference starts from, into one file with the swin encoder's weights under "
            "'encoder.' and the mask2former head's under 'mask_head.'. The COCO class head and the learned queries "
            "are dropped. Point model.encoder.weights and model.mask_head.weights at the output."
        ),
    )
    m2f.add_argument("src", help="detectron2 checkpoint (.pkl from the model zoo, or .pth)")
    m2f.add_argument("dst", help="output weights file (.safetensors or .pth)")
    m2f.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    m2f.set_defaults(func=cmd_convert_mask2former)
