"""``segearth convert``: pretrained checkpoints of other code bases as files our components' ``weights:`` load.

``segearth-r1``: a published SegEarth-R1 checkpoint (HF folder of the llava_phi model) becomes a model bundle
(``framework.infer.bundle``) of the faithful config's components, so the published model runs in our evaluator and
``segearth predict``. The rule sets share their Swin / pixel-decoder / predictor parts with ``mask2former``.

``mask2former``: an original Mask2Former (detectron2) checkpoint, as the reference initialises from (its Swin
backbone, pixel decoder and transformer decoder), becomes one file holding the ``swin``
encoder's state dict under ``encoder.`` and the ``mask2former`` head's under ``mask_head.``; point both
``model.encoder.weights`` and ``model.mask_head.weights`` at it. Every source tensor is either renamed by a rule
below or dropped by a rule that says why; anything else stops the conversion, so a checkpoint of another
architecture (e.g. a ResNet backbone) is refused instead of half-converted.
"""

from __future__ import annotations

import pickle
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framework.core.config import load_config
from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from framework.infer.bundle import write_bundle

SUFFIXES_IN = (".pkl", ".pth", ".pt")
SUFFIXES_OUT = (".safetensors", ".pth", ".pt")
QKV = ("q", "k", "v")  # order of the three blocks of an nn.MultiheadAttention in_proj


@dataclass(frozen=True)
class Rule:
    """A source key (full match of ``pattern``) -> ``target`` (``re`` template or function of the match), or
    dropped for ``reason`` when there is no target. ``split``: the tensor stacks q, k, v (an
    ``nn.MultiheadAttention`` in_proj) and becomes three tensors, ``{part}`` in the target naming each.
    ``transform``: the tensor changes form on the way (an approximation, ``reason`` says which)."""

    pattern: re.Pattern[str]
    target: str | Callable[[re.Match[str]], str] | None = None
    reason: str | None = None
    split: bool = False
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def _rule(pattern: str, target: str | Callable[[re.Match[str]], str] | None = None, *, reason: str | None = None,
          split: bool = False, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Rule:
    assert (target is None) != (reason is None) or transform is not None, "a rule renames (target) or drops (reason)"
    return Rule(re.compile(pattern), target, reason, split, transform)


_P = r"(weight|bias)"
_DEC = "mask_head.decoder.layers."


def swin_rules(src: str) -> tuple[Rule, ...]:
    """A Swin in the original (detectron2 / Mask2Former) layout under ``src`` -> the ``swin`` encoder (timm
    layout): the original merges patches at the end of stage i, timm at the start of stage i + 1."""
    return (
        _rule(src + r"patch_embed\.(proj|norm)\." + _P, r"encoder.patch_embed.\1.\2"),
        _rule(src + r"layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\." + _P,
              r"encoder.layers.\1.blocks.\2.\3.\4"),
        _rule(src + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
              r"encoder.layers.\1.blocks.\2.attn.relative_position_bias_table"),
        _rule(src + r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index",
              reason="index buffers the encoder computes itself"),
        _rule(src + r"layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
              lambda m: f"encoder.layers.{int(m[1]) + 1}.downsample.{m[2]}"),
        _rule(src + r"norm(\d)\." + _P, r"encoder.norm\1.\2"),
    )


def pixel_decoder_rules(src: str) -> tuple[Rule, ...]:
    """Mask2Former's MSDeformAttn pixel decoder under ``src`` -> the ``mask2former`` head's (transformers'
    parts): deformable-attention encoder over the 3 coarsest maps (coarsest first), FPN lateral + output. The
    lateral/output convs are detectron2 ``Conv2d(norm=...)`` (``adapter_1.weight``, ``adapter_1.norm.*``) or
    already ``Sequential(conv, norm)`` (``adapter_1.0.weight``, ``adapter_1.1.*``), as SegEarth-R1 keeps them."""
    layer = src + r"transformer\.encoder\.layers\.(\d+)\."
    return (
        _rule(src + r"input_proj\.(\d+)\.([01])\." + _P, r"mask_head.pixel_decoder.input_projections.\1.\2.\3"),
        _rule(src + r"transformer\.level_embed", "mask_head.pixel_decoder.level_embed"),
        _rule(layer + r"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\." + _P,
              r"mask_head.pixel_decoder.encoder.layers.\1.self_attn.\2.\3"),
        _rule(layer + r"norm1\." + _P, r"mask_head.pixel_decoder.encoder.layers.\1.self_attn_layer_norm.\2"),
        _rule(layer + r"linear([12])\." + _P, r"mask_head.pixel_decoder.encoder.layers.\1.fc\2.\3"),
        _rule(layer + r"norm2\." + _P, r"mask_head.pixel_decoder.encoder.layers.\1.final_layer_norm.\2"),
        _rule(src + r"mask_features\." + _P, r"mask_head.pixel_decoder.mask_projection.\1"),
        _rule(src + r"(adapter|layer)_(\d+)\.weight", r"mask_head.pixel_decoder.\1_\2.0.weight"),
        _rule(src + r"(adapter|layer)_(\d+)\.norm\." + _P, r"mask_head.pixel_decoder.\1_\2.1.\3"),
        _rule(src + r"(adapter|layer)_(\d+)\.0\.weight", r"mask_head.pixel_decoder.\1_\2.0.weight"),
        _rule(src + r"(adapter|layer)_(\d+)\.1\." + _P, r"mask_head.pixel_decoder.\1_\2.1.\3"),
    )


def predictor_rules(src: str) -> tuple[Rule, ...]:
    """Mask2Former's masked-attention transformer decoder under ``src`` -> the ``mask2former`` head's;
    transformers keeps nn.MultiheadAttention for the masked cross-attention only."""
    return (
        _rule(src + r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_" + _P,
              _DEC + r"\1.self_attn.{part}_proj.\2", split=True),
        _rule(src + r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\." + _P,
              _DEC + r"\1.self_attn.out_proj.\2"),
        _rule(src + r"transformer_self_attention_layers\.(\d+)\.norm\." + _P, _DEC + r"\1.self_attn_layer_norm.\2"),
        _rule(src + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|"
              r"out_proj\.weight|out_proj\.bias)", _DEC + r"\1.cross_attn.\2"),
        _rule(src + r"transformer_cross_attention_layers\.(\d+)\.norm\." + _P, _DEC + r"\1.cross_attn_layer_norm.\2"),
        _rule(src + r"transformer_ffn_layers\.(\d+)\.linear([12])\." + _P, _DEC + r"\1.fc\2.\3"),
        _rule(src + r"transformer_ffn_layers\.(\d+)\.norm\." + _P, _DEC + r"\1.final_layer_norm.\2"),
        _rule(src + r"decoder_norm\." + _P, r"mask_head.decoder.layernorm.\1"),
        _rule(src + r"mask_embed\.layers\.(\d+)\." + _P, r"mask_head.decoder.mask_predictor.mask_embedder.\1.0.\2"),
        _rule(src + r"level_embed\.weight", "mask_head.level_embed.weight"),
        _rule(src + r"(query_feat|query_embed)\.weight",
              reason="learned object queries (the description embedding is the query here)"),
    )


# detectron2 Mask2Former (Swin backbone) -> swin encoder (timm layout) and mask2former head (transformers' parts).
MASK2FORMER_RULES: tuple[Rule, ...] = (
    *swin_rules(r"backbone\."),
    *pixel_decoder_rules(r"sem_seg_head\.pixel_decoder\."),
    *predictor_rules(r"sem_seg_head\.predictor\."),
    _rule(r"sem_seg_head\.predictor\.class_embed\." + _P, reason="COCO class head (no class head here)"),
    _rule(r"criterion\.empty_weight", reason="loss weights of COCO training"),
)


def _spatial_mean(tensor: torch.Tensor) -> torch.Tensor:
    """LayerNorm([C,H,W]) affine [C,H,W] -> GroupNorm(1,C) affine [C]: the mean over H, W."""
    return tensor.float().mean(dim=(1, 2)).to(tensor.dtype)


_LN_TO_GN = (
    "LayerNorm([C,H,W]) affine averaged over H,W into GroupNorm(1,C)'s per-channel affine "
    "(exact where it is constant over space; the faithful config's documented deviation)"
)
_PHI = r"model\.layers\.(\d+)\.(self_attn\.(?:q_proj|k_proj|v_proj|dense)|mlp\.fc[12]|input_layernorm)\." + _P
_R1_PREDICTOR = r"predictor\."

# SegEarth-R1 (HF llava_phi checkpoint) -> every slot of experiments/segearth_r1. Names: the
# segearth_r1 model is a PhiForCausalLM whose ``model`` also holds ``vision_tower`` (Swin-B) and ``mm_projector``
# (SparseConv_1 compression connector); the description projector, pixel decoder and predictor hang off the top.
SEGEARTH_R1_RULES: tuple[Rule, ...] = (
    *swin_rules(r"model\.vision_tower\."),
    _rule(r"model\.mm_projector\.proj([12])\." + _P, lambda m: f"compressor.body.{2 * (int(m[1]) - 1)}.{m[2]}"),
    _rule(r"model\.mm_projector\.norm([12])\." + _P, lambda m: f"compressor.body.{2 * int(m[1]) - 1}.{m[2]}",
          reason=_LN_TO_GN, transform=_spatial_mean),
    _rule(r"model\.mm_projector\.fc\." + _P, r"compressor.body.4.\1"),
    _rule(r"model\.embed_tokens\.weight", "llm.causal_lm.model.embed_tokens.weight"),
    _rule(_PHI, r"llm.causal_lm.model.layers.\1.\2.\3"),
    _rule(r"model\.final_layernorm\." + _P, r"llm.causal_lm.model.final_layernorm.\1"),
    _rule(r"lm_head\.weight", "llm.causal_lm.lm_head.weight"),
    _rule(r"origin_SEG_token_projector\." + _P, r"projector.origin.\1"),
    _rule(r"text_projector\." + _P, r"projector.latent.\1"),  # only its row 0 (the mean) reaches the output
    _rule(r"local_project\." + _P, r"projector.media.0.\1"),
    _rule(r"SEG_token_projector\." + _P, r"projector.out.\1"),
    _rule(r"d_layers\.layers\.(\d+)\.0\.(norm_media|norm_latents|to_q|to_kv|to_out)\." + _P,
          r"projector.fusion.layers.\1.0.\2.\3"),
    _rule(r"d_layers\.layers\.(\d+)\.1\.([013])\." + _P, r"projector.fusion.layers.\1.1.\2.\3"),
    _rule(r"d_layers\.norm\." + _P, r"projector.fusion.norm.\1"),
    _rule(r"seg_query", reason="seg_query [100, D_llm]: never read with use_seg_query=False"),
    *pixel_decoder_rules(r"pixel_decoder\."),
    *predictor_rules(_R1_PREDICTOR),
    _rule(_R1_PREDICTOR + r"(SEG_query_embed|new_query_embed)\.weight",
          reason="query embeddings the single-[SEG]-query decoder never reads (its query position is zero)"),
    _rule(_R1_PREDICTOR + r"(SEG_proj|CLASS_proj)\.layers\.(\d+)\." + _P,
          reason="SEG_proj / CLASS_proj MLPs without a caller (no class logits)"),
    _rule(r"criterion\..*", reason="loss state of training"),
)


@dataclass
class Conversion:
    """``tensors``: the converted state dict; ``mapped``: source keys that went into it; ``discarded``: source
    keys dropped, by reason; ``approximated``: mapped source keys whose tensor changed form, by reason;
    ``added``: target tensors the source has no counterpart of, with why their value is exact."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    mapped: list[str] = field(default_factory=list)
    discarded: dict[str, list[str]] = field(default_factory=dict)
    approximated: dict[str, list[str]] = field(default_factory=dict)
    added: dict[str, str] = field(default_factory=dict)

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
        for reason, keys in self.approximated.items():
            patterns = dict.fromkeys(re.sub(r"\.\d+(?=\.)", ".*", key) for key in keys)
            lines.append(f"  approximated {len(keys)}, {reason}: {', '.join(patterns)}")
        for key, reason in self.added.items():
            lines.append(f"  added {key}: {reason}")
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
        if rule.transform is not None:
            tensor = rule.transform(tensor)
            out.approximated.setdefault(str(rule.reason), []).append(key)
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


FAITHFUL_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "segearth_r1" / "earthreason.yaml"
# Phi architecture keys of the checkpoint's config.json that the LLM slot's inline config takes over.
PHI_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "partial_rotary_factor", "max_position_embeddings", "layer_norm_eps", "rope_theta",
    "hidden_act", "qk_layernorm", "tie_word_embeddings",
)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")


def read_hf_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors of every ``*.safetensors`` file, ``config.json``) of a Hugging Face model folder."""
    import json

    from safetensors.torch import load_file

    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder (expected a Hugging Face model folder with config.json)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder}: no .safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = load_file(str(file), device="cpu")
        except Exception as error:  # any unreadable file is the user's to fix  # noqa: BLE001
            raise ConfigError(f"{file}: cannot read ({error})") from error
        twice = sorted(set(part) & set(tensors))
        if twice:
            raise ConfigError(f"{folder}: tensor {twice[0]!r} is in more than one shard")
        tensors.update(part)
    return tensors, json.loads((folder / "config.json").read_text())


def segearth_r1_config(hf_config: dict, base: str | Path, tokenizer: Path | None) -> dict:
    """The experiment ``base`` (default: our faithful EarthReason config) with the LLM architecture of the
    checkpoint's ``config.json`` and, when the checkpoint folder has one, its tokenizer."""
    if hf_config.get("model_type") != "llava_phi":
        raise ConfigError(
            f"config.json: model_type {hf_config.get('model_type')!r}, a SegEarth-R1 checkpoint has 'llava_phi'"
        )
    cfg = load_config(base)
    llm = cfg["model"]["llm"]
    llm["config"] = {"model_type": "phi", **{k: hf_config[k] for k in PHI_KEYS if k in hf_config}}
    llm["embedding_rows"] = hf_config["vocab_size"]
    if tokenizer is not None:
        llm["tokenizer"] = str(tokenizer)
    return cfg


def convert_segearth_r1(
    src: str | Path, dst: str | Path, config: str | Path = FAITHFUL_CONFIG, overwrite: bool = False
) -> Conversion:
    """Convert a published SegEarth-R1 checkpoint folder ``src`` into a model bundle ``dst`` (``segearth
    predict --model DST``, ``segearth test CONFIG --ckpt DST``), built from ``config`` with the checkpoint's LLM
    architecture. Every tensor of the model must receive one, with its shape."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise ConfigError(f"{dst} exists (use --overwrite to replace it)")
    state, hf_config = read_hf_checkpoint(src)
    conversion = convert(state, SEGEARTH_R1_RULES, str(src))
    lm_head = conversion.tensors.get("llm.causal_lm.lm_head.weight")
    if lm_head is not None:  # transformers' Phi head has a bias, the reference's was re-created without one
        conversion.tensors["llm.causal_lm.lm_head.bias"] = torch.zeros(lm_head.shape[0], dtype=lm_head.dtype)
        conversion.added["llm.causal_lm.lm_head.bias"] = "zeros: the reference's lm_head has no bias (exact)"
    has_tokenizer = any((src / name).is_file() for name in TOKENIZER_FILES)
    cfg = segearth_r1_config(hf_config, config, src if has_tokenizer else None)
    model = SegEarthModel(cfg["model"])
    own = model.state_dict()
    problems = [f"missing {key}" for key in own if key not in conversion.tensors]
    problems += [f"unexpected {key}" for key in conversion.tensors if key not in own]
    problems += [
        f"{key}: {tuple(tensor.shape)} in the checkpoint, {tuple(own[key].shape)} in the model"
        for key, tensor in conversion.tensors.items()
        if key in own and own[key].shape != tensor.shape
    ]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems) - 8} more)" if len(problems) > 8 else "")
        raise ConfigError(f"{src}: the checkpoint does not fit {config}: {shown}")
    model.load_state_dict(conversion.tensors, strict=True)
    write_bundle(model, cfg, dst, source=str(src), overwrite=overwrite)
    return conversion
