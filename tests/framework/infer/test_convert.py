"""``segearth convert mask2former``: a detectron2 Mask2Former checkpoint (names and shapes as detectron2's modules
make them, at nano size) lands tensor by tensor in the real swin encoder and mask2former head."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from components.encoders.swin import SwinEncoder
from components.mask_heads.mask2former import Mask2FormerHead
from framework.cli import convert as convert_command
from framework.cli.main import main
from framework.core.errors import ConfigError
from framework.infer.bundle import open_bundle
from framework.infer.convert import convert_mask2former, convert_segearth_r1, read_detectron2_checkpoint
from framework.infer.predictor import load_model

STRIDES = [4, 8, 16, 32]
PIX, PRED = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."


@dataclass(frozen=True)
class Arch:
    """A Mask2Former with a Swin backbone, as detectron2 configures it."""

    embed: int
    depths: tuple[int, ...]
    swin_heads: tuple[int, ...]
    window: int
    hidden: int  # CONVS_DIM = HIDDEN_DIM
    mask_dim: int
    heads: int
    enc_layers: int
    enc_ff: int
    dec_layers: int  # DEC_LAYERS - 1 decoder layers are built
    dec_ff: int
    queries: int
    classes: int
    points: int = 4

    @property
    def channels(self) -> list[int]:
        return [self.embed * 2**i for i in range(4)]

    @property
    def head_config(self) -> dict:
        return {
            "hidden_dim": self.hidden, "mask_dim": self.mask_dim, "enc_layers": self.enc_layers,
            "dec_layers": self.dec_layers, "dim_feedforward": self.dec_ff, "enc_dim_feedforward": self.enc_ff,
            "heads": self.heads,
        }


# Our swin "nano" with the head at small widths; FFN, mask and hidden widths all differ so that a tensor landing
# in the wrong place shows up as a shape or value mismatch.
NANO = Arch(embed=32, depths=(2, 2, 2, 2), swin_heads=(1, 2, 4, 8), window=7, hidden=32, mask_dim=64, heads=4,
            enc_layers=1, enc_ff=48, dec_layers=2, dec_ff=80, queries=5, classes=7)
# model_final_54b88a.pkl, the reference's start: COCO panoptic Swin-B/384 (IN-21k), 133 classes, 100 queries
SWIN_B_384 = Arch(embed=128, depths=(2, 2, 18, 2), swin_heads=(4, 8, 16, 32), window=12, hidden=256, mask_dim=256,
                  heads=8, enc_layers=6, enc_ff=1024, dec_layers=9, dec_ff=2048, queries=100, classes=133)


def linear(name: str, n_out: int, n_in: int) -> dict[str, tuple]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def norm(name: str, n: int) -> dict[str, tuple]:
    return {f"{name}.weight": (n,), f"{name}.bias": (n,)}


def multihead_attention(name: str, n: int) -> dict[str, tuple]:
    return {f"{name}.in_proj_weight": (3 * n, n), f"{name}.in_proj_bias": (3 * n,), **linear(f"{name}.out_proj", n, n)}


def detectron2_shapes(a: Arch) -> dict[str, tuple]:
    """Names and shapes of a Mask2Former (D2SwinTransformer + MSDeformAttnPixelDecoder +
    MultiScaleMaskedTransformerDecoder) state dict, in detectron2's module order."""
    shapes: dict[str, tuple] = {"backbone.patch_embed.proj.weight": (a.embed, 3, 4, 4)}
    shapes |= {"backbone.patch_embed.proj.bias": (a.embed,), **norm("backbone.patch_embed.norm", a.embed)}
    for i, (depth, heads, c) in enumerate(zip(a.depths, a.swin_heads, a.channels)):
        for j in range(depth):
            block = f"backbone.layers.{i}.blocks.{j}"
            shapes |= norm(f"{block}.norm1", c)
            shapes[f"{block}.attn.relative_position_bias_table"] = ((2 * a.window - 1) ** 2, heads)
            shapes[f"{block}.attn.relative_position_index"] = (a.window**2, a.window**2)
            shapes |= linear(f"{block}.attn.qkv", 3 * c, c) | linear(f"{block}.attn.proj", c, c)
            shapes |= norm(f"{block}.norm2", c) | linear(f"{block}.mlp.fc1", 4 * c, c)
            shapes |= linear(f"{block}.mlp.fc2", c, 4 * c)
        if i < 3:  # the original Swin merges patches at the end of a stage
            shapes[f"backbone.layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes |= norm(f"backbone.layers.{i}.downsample.norm", 4 * c)
    for i, c in enumerate(a.channels):
        shapes |= norm(f"backbone.norm{i}", c)
    for k, c in enumerate(a.channels[:0:-1]):  # res5, res4, res3: from low to high resolution
        shapes |= {f"{PIX}input_proj.{k}.0.weight": (a.hidden, c, 1, 1), f"{PIX}input_proj.{k}.0.bias": (a.hidden,)}
        shapes |= norm(f"{PIX}input_proj.{k}.1", a.hidden)
    shapes[f"{PIX}transformer.level_embed"] = (3, a.hidden)
    for i in range(a.enc_layers):
        layer = f"{PIX}transformer.encoder.layers.{i}"
        shapes |= linear(f"{layer}.self_attn.sampling_offsets", a.heads * 3 * a.points * 2, a.hidden)
        shapes |= linear(f"{layer}.self_attn.attention_weights", a.heads * 3 * a.points, a.hidden)
        shapes |= linear(f"{layer}.self_attn.value_proj", a.hidden, a.hidden)
        shapes |= linear(f"{layer}.self_attn.output_proj", a.hidden, a.hidden) | norm(f"{layer}.norm1", a.hidden)
        shapes |= linear(f"{layer}.linear1", a.enc_ff, a.hidden) | linear(f"{layer}.linear2", a.hidden, a.enc_ff)
        shapes |= norm(f"{layer}.norm2", a.hidden)
    shapes |= {f"{PIX}mask_features.weight": (a.mask_dim, a.hidden, 1, 1), f"{PIX}mask_features.bias": (a.mask_dim,)}
    shapes |= {f"{PIX}adapter_1.weight": (a.hidden, a.channels[0], 1, 1), **norm(f"{PIX}adapter_1.norm", a.hidden)}
    shapes |= {f"{PIX}layer_1.weight": (a.hidden, a.hidden, 3, 3), **norm(f"{PIX}layer_1.norm", a.hidden)}
    for i in range(a.dec_layers):
        shapes |= multihead_attention(f"{PRED}transformer_self_attention_layers.{i}.self_attn", a.hidden)
        shapes |= norm(f"{PRED}transformer_self_attention_layers.{i}.norm", a.hidden)
        shapes |= multihead_attention(f"{PRED}transformer_cross_attention_layers.{i}.multihead_attn", a.hidden)
        shapes |= norm(f"{PRED}transformer_cross_attention_layers.{i}.norm", a.hidden)
        shapes |= linear(f"{PRED}transformer_ffn_layers.{i}.linear1", a.dec_ff, a.hidden)
        shapes |= linear(f"{PRED}transformer_ffn_layers.{i}.linear2", a.hidden, a.dec_ff)
        shapes |= norm(f"{PRED}transformer_ffn_layers.{i}.norm", a.hidden)
    shapes |= norm(f"{PRED}decoder_norm", a.hidden)
    shapes |= {f"{PRED}query_feat.weight": (a.queries, a.hidden), f"{PRED}query_embed.weight": (a.queries, a.hidden)}
    shapes[f"{PRED}level_embed.weight"] = (3, a.hidden)
    shapes |= linear(f"{PRED}class_embed", a.classes + 1, a.hidden)
    for i, n_out in enumerate((a.hidden, a.hidden, a.mask_dim)):
        shapes |= linear(f"{PRED}mask_embed.layers.{i}", n_out, a.hidden)
    shapes["criterion.empty_weight"] = (a.classes + 1,)
    return shapes


def fake_checkpoint(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        key: rng.integers(0, NANO.window**4, shape) if key.endswith("index") else rng.standard_normal(shape, np.float32)
        for key, shape in detectron2_shapes(NANO).items()
    }


def write_pkl(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with path.open("wb") as f:  # the model zoo's layout
        pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": True}, f)
    return path


def load_components(weights: Path) -> tuple[SwinEncoder, Mask2FormerHead]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weight left at its initial value, no converted tensor unused
        encoder = SwinEncoder(variant="nano", weights=str(weights))
        head = Mask2FormerHead(in_channels=NANO.channels, strides=STRIDES, weights=str(weights), **NANO.head_config)
    return encoder, head


@pytest.fixture(scope="module")
def source() -> dict[str, np.ndarray]:
    return fake_checkpoint()


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("m2f")
    dst = folder / "m2f.safetensors"
    return dst, convert_mask2former(write_pkl(folder / "model_final.pkl", source), dst)


def test_every_tensor_is_converted_or_knowingly_discarded(source, converted) -> None:
    _, conversion = converted
    discarded = {reason.split(" ")[0]: keys for reason, keys in conversion.discarded.items()}
    assert len(discarded["index"]) == sum(NANO.depths)
    assert sorted(discarded["learned"]) == [f"{PRED}query_embed.weight", f"{PRED}query_feat.weight"]
    assert sorted(discarded["COCO"]) == [f"{PRED}class_embed.bias", f"{PRED}class_embed.weight"]
    assert discarded["loss"] == ["criterion.empty_weight"]
    assert len(conversion.mapped) + sum(map(len, discarded.values())) == len(source)
    # q, k, v of each self-attention are one tensor in detectron2, three in transformers
    assert len(conversion.tensors) == len(conversion.mapped) + 2 * 2 * NANO.dec_layers


def test_the_components_load_it_with_every_tensor_in_its_place(source, converted) -> None:
    dst, conversion = converted
    encoder, head = load_components(dst)
    for slot, module in (("encoder", encoder), ("mask_head", head)):
        converted_keys = {k for k in conversion.tensors if k.startswith(f"{slot}.")}
        assert converted_keys == {f"{slot}.{k}" for k in module.state_dict()}

    def same(param: torch.Tensor, key: str) -> None:
        torch.testing.assert_close(param.detach(), torch.from_numpy(source[key]), rtol=0, atol=0)

    same(encoder.patch_embed.proj.weight, "backbone.patch_embed.proj.weight")
    block = encoder.layers[2].blocks[1]
    same(block.attn.relative_position_bias_table, "backbone.layers.2.blocks.1.attn.relative_position_bias_table")
    same(block.attn.qkv.weight, "backbone.layers.2.blocks.1.attn.qkv.weight")
    same(block.mlp.fc2.bias, "backbone.layers.2.blocks.1.mlp.fc2.bias")
    same(encoder.layers[1].downsample.reduction.weight, "backbone.layers.0.downsample.reduction.weight")
    same(encoder.layers[3].downsample.norm.bias, "backbone.layers.2.downsample.norm.bias")
    same(encoder.norm3.weight, "backbone.norm3.weight")

    pixel = head.pixel_decoder
    same(pixel.input_projections[0][0].weight, f"{PIX}input_proj.0.0.weight")  # res5: 256 channels in
    same(pixel.input_projections[2][1].bias, f"{PIX}input_proj.2.1.bias")
    same(pixel.level_embed, f"{PIX}transformer.level_embed")
    deformable = pixel.encoder.layers[0]
    source_layer = f"{PIX}transformer.encoder.layers.0"
    same(deformable.self_attn.sampling_offsets.weight, f"{source_layer}.self_attn.sampling_offsets.weight")
    same(deformable.self_attn_layer_norm.bias, f"{source_layer}.norm1.bias")
    same(deformable.fc2.weight, f"{source_layer}.linear2.weight")
    same(deformable.final_layer_norm.weight, f"{source_layer}.norm2.weight")
    same(pixel.mask_projection.weight, f"{PIX}mask_features.weight")
    same(pixel.adapter_1[0].weight, f"{PIX}adapter_1.weight")
    same(pixel.layer_1[1].bias, f"{PIX}layer_1.norm.bias")

    layer = head.decoder.layers[1]
    in_proj = torch.from_numpy(source[f"{PRED}transformer_self_attention_layers.1.self_attn.in_proj_weight"])
    in_bias = torch.from_numpy(source[f"{PRED}transformer_self_attention_layers.1.self_attn.in_proj_bias"])
    rows = [slice(i * NANO.hidden, (i + 1) * NANO.hidden) for i in range(3)]
    for proj, part in zip((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), rows, strict=True):
        torch.testing.assert_close(proj.weight.detach(), in_proj[part], rtol=0, atol=0)
        torch.testing.assert_close(proj.bias.detach(), in_bias[part], rtol=0, atol=0)
    same(layer.self_attn_layer_norm.weight, f"{PRED}transformer_self_attention_layers.1.norm.weight")
    same(layer.cross_attn.in_proj_weight, f"{PRED}transformer_cross_attention_layers.1.multihead_attn.in_proj_weight")
    same(layer.cross_attn_layer_norm.bias, f"{PRED}transformer_cross_attention_layers.1.norm.bias")
    same(layer.fc1.weight, f"{PRED}transformer_ffn_layers.1.linear1.weight")
    same(layer.final_layer_norm.bias, f"{PRED}transformer_ffn_layers.1.norm.bias")
    same(head.decoder.layernorm.weight, f"{PRED}decoder_norm.weight")
    same(head.decoder.mask_predictor.mask_embedder.layers[2].layers[0].weight, f"{PRED}mask_embed.layers.2.weight")
    same(head.level_embed.weight, f"{PRED}level_embed.weight")


def test_split_self_attention_computes_what_the_original_computed(source, converted) -> None:
    """detectron2's SelfAttentionLayer runs nn.MultiheadAttention(q = k = x + pos, v = x); transformers' attention
    with the split projections gives the same output."""
    _, head = load_components(converted[0])
    prefix = f"{PRED}transformer_self_attention_layers.0.self_attn."
    original = nn.MultiheadAttention(NANO.hidden, NANO.heads)
    original.load_state_dict({k[len(prefix) :]: torch.from_numpy(v) for k, v in source.items() if k.startswith(prefix)})
    generator = torch.Generator().manual_seed(0)
    x, pos = torch.randn(3, 2, NANO.hidden, generator=generator), torch.randn(3, 2, NANO.hidden, generator=generator)
    with torch.no_grad():
        want = original(x + pos, x + pos, x)[0]
        got = head.decoder.layers[0].self_attn(hidden_states=x, position_embeddings=pos)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_torch_checkpoint_converts_alike(source, converted, tmp_path) -> None:
    torch.save({"model": {k: torch.from_numpy(v) for k, v in source.items()}, "iteration": 3}, tmp_path / "m.pth")
    again = convert_mask2former(tmp_path / "m.pth", tmp_path / "m.pth.pth")
    assert again.tensors.keys() == converted[1].tensors.keys()
    for key, tensor in converted[1].tensors.items():
        assert torch.equal(again.tensors[key], tensor), key
    assert read_detectron2_checkpoint(tmp_path / "m.pth.pth").keys() == again.tensors.keys()


def test_a_tensor_no_rule_knows_is_an_error(source, tmp_path) -> None:
    extra = dict(source)
    extra["backbone.res2.0.conv1.weight"] = np.zeros((4, 3, 1, 1), np.float32)  # a ResNet's
    extra[f"{PRED}input_proj.0.weight"] = np.zeros((4, 4, 1, 1), np.float32)
    with pytest.raises(ConfigError, match=r"2 tensor\(s\) neither.*backbone\.res2\.0\.conv1\.weight, .*input_proj"):
        convert_mask2former(write_pkl(tmp_path / "x.pkl", extra), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_wrong_shapes_name_the_tensor_and_both_shapes(source, converted, tmp_path) -> None:
    key = f"{PRED}transformer_self_attention_layers.1.self_attn.in_proj_weight"
    broken = dict(source, **{key: np.zeros((3 * NANO.hidden + 3, NANO.hidden), np.float32)})
    with pytest.raises(ConfigError, match=rf"{key}' has shape \(99, 32\), expected \(96, 32\)"):
        convert_mask2former(write_pkl(tmp_path / "b.pkl", broken), tmp_path / "b.safetensors")
    # the converted file into a head of other widths
    with pytest.raises(ConfigError, match=r"encoder\.layers\.0\.fc1\.(weight|bias)' has shape \(48,.*expects \(64,"):
        Mask2FormerHead(in_channels=NANO.channels, strides=STRIDES, weights=str(converted[0]),
                        **(NANO.head_config | {"enc_dim_feedforward": 64}))


def test_the_reference_checkpoint_layout_fits_the_faithful_encoder_and_head(tmp_path) -> None:
    """Shapes only (zeros): Swin-B/384 Mask2Former converts into exactly the tensors of swin base_w12 and the
    default mask2former head, with no key missing, unused or of another shape."""
    shapes = detectron2_shapes(SWIN_B_384)
    torch.save({"model": {k: torch.zeros(s, dtype=torch.int64 if k.endswith("index") else torch.float32)
                          for k, s in shapes.items()}}, tmp_path / "model_final_54b88a.pth")
    dst = tmp_path / "swin_b_384.safetensors"
    conversion = convert_mask2former(tmp_path / "model_final_54b88a.pth", dst)
    assert len(conversion.mapped) == len(shapes) - sum(SWIN_B_384.depths) - 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder = SwinEncoder(variant="base_w12", weights=str(dst))
        head = Mask2FormerHead(in_channels=encoder.channels, strides=encoder.strides, weights=str(dst))
    assert head.decoder.layers[8].fc1.weight.shape == (2048, 256)
    assert sum(t.numel() for t in conversion.tensors.values()) == sum(
        p.numel() for p in [*encoder.parameters(), *head.parameters()]
    )
    for file in tmp_path.iterdir():  # 0.9 GB that pytest would otherwise keep for a few sessions
        file.unlink()


def test_a_pickle_that_would_run_code_is_refused(tmp_path) -> None:
    class Payload:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    with (tmp_path / "evil.pkl").open("wb") as f:
        pickle.dump({"model": {"x": Payload()}}, f)
    with pytest.raises(ConfigError, match="refusing to unpickle (posix|nt).system"):
        read_detectron2_checkpoint(tmp_path / "evil.pkl")


def test_command(source, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    convert_command.add_parser(parser.add_subparsers(dest="command", required=True))
    src = write_pkl(tmp_path / "model_final.pkl", source)
    dst = tmp_path / "out" / "swin_b.safetensors"
    args = parser.parse_args(["convert", "mask2former", str(src), str(dst)])
    args.func(args)
    out = capsys.readouterr().out
    n_source = len(source)
    assert f"from {n_source} source tensors: {n_source - 13} converted, 13 discarded" in out
    assert "discarded 8, index buffers the encoder computes itself: backbone.layers.*.blocks.*.attn." in out
    assert f"model.encoder.weights={dst} model.mask_head.weights={dst}" in out
    load_components(dst)
    with pytest.raises(ConfigError, match="exists"):
        args.func(args)
    again = parser.parse_args(["convert", "mask2former", str(src), str(dst), "--overwrite"])
    again.func(again)
    with pytest.raises(ConfigError, match="must be one of"):
        args.func(parser.parse_args(["convert", "mask2former", str(src), str(tmp_path / "out.npz")]))
    with pytest.raises(ConfigError, match="does not exist"):
        args.func(parser.parse_args(["convert", "mask2former", str(tmp_path / "none.pkl"), str(dst)]))
    with pytest.raises(SystemExit):
        parser.parse_args(["convert"])  # a format is required


# ------------------------------------------------------------------------------------------------ segearth-r1
# The published SegEarth-R1 checkpoint (HF folder, llava_phi) by the reference's module names (the
# segearth_r1 model is a PhiForCausalLM whose ``model`` holds the Swin ``vision_tower`` and the SparseConv_1
# ``mm_projector``; the D-Projector, pixel decoder and predictor hang off the top), at a scaled-down size.
R1_LLM = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "partial_rotary_factor": 0.5, "max_position_embeddings": 2048}
R1_DIM, R1_HEADS, R1_DIM_HEAD = 32, 2, 16  # D-Projector (reference: 512, 8, 64)
R1_RES5 = 8  # res5 side the LayerNorm([C,H,W]) shapes were made for (reference: 32 at 1024 px)


def segearth_r1_shapes(a: Arch = NANO) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for key, shape in detectron2_shapes(a).items():
        if key.startswith("backbone."):
            shapes["model.vision_tower." + key[len("backbone."):]] = shape
        elif key.startswith(PIX):  # the reference keeps the FPN convs as Sequential(conv, norm)
            name = re.sub(r"^(adapter|layer)_1\.weight$", r"\1_1.0.weight", key[len(PIX):])
            shapes["pixel_decoder." + re.sub(r"^(adapter|layer)_1\.norm\.", r"\1_1.1.", name)] = shape
        elif key.startswith(PRED) and ".class_embed." not in key:  # no class head in the reference
            shapes["predictor." + key[len(PRED):]] = shape
    shapes["predictor.SEG_query_embed.weight"] = (a.queries + 1, a.hidden)
    shapes["predictor.new_query_embed.weight"] = (1, a.hidden)
    for mlp in ("SEG_proj", "CLASS_proj"):
        for i in range(2):
            shapes |= linear(f"predictor.{mlp}.layers.{i}", a.hidden, a.hidden)
    d, v, inner, c5 = R1_LLM["hidden_size"], R1_LLM["vocab_size"], R1_LLM["intermediate_size"], a.channels[-1]
    side = R1_RES5 // 2
    shapes |= {"model.mm_projector.proj1.weight": (d, c5, 3, 3), "model.mm_projector.proj1.bias": (d,)}
    shapes |= {"model.mm_projector.norm1.weight": (d, side, side), "model.mm_projector.norm1.bias": (d, side, side)}
    shapes |= {"model.mm_projector.proj2.weight": (d, d, 3, 3), "model.mm_projector.proj2.bias": (d,)}
    shapes |= {"model.mm_projector.norm2.weight": (d, side // 2, side // 2),
               "model.mm_projector.norm2.bias": (d, side // 2, side // 2)}
    shapes |= {"model.mm_projector.fc.weight": (d, d, 1, 1), "model.mm_projector.fc.bias": (d,)}
    shapes["model.embed_tokens.weight"] = (v, d)
    for i in range(R1_LLM["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "dense"):
            shapes |= linear(f"model.layers.{i}.self_attn.{proj}", d, d)
        shapes |= linear(f"model.layers.{i}.mlp.fc1", inner, d) | linear(f"model.layers.{i}.mlp.fc2", d, inner)
        shapes |= norm(f"model.layers.{i}.input_layernorm", d)
    shapes |= norm("model.final_layernorm", d)
    shapes["lm_head.weight"] = (v, d)  # re-created without bias
    shapes["seg_query"] = (100, d)
    shapes |= linear("text_projector", R1_DIM, d) | linear("origin_SEG_token_projector", R1_DIM, d)
    shapes |= linear("local_project", R1_DIM, c5) | linear("SEG_token_projector", a.hidden, 2 * R1_DIM)
    perceiver, ff = "d_layers.layers.0.0", "d_layers.layers.0.1"
    shapes |= norm(f"{perceiver}.norm_media", R1_DIM) | norm(f"{perceiver}.norm_latents", R1_DIM)
    inner_attn = R1_HEADS * R1_DIM_HEAD
    shapes |= {f"{perceiver}.to_q.weight": (inner_attn, R1_DIM), f"{perceiver}.to_kv.weight": (2 * inner_attn, R1_DIM),
               f"{perceiver}.to_out.weight": (R1_DIM, inner_attn)}
    shapes |= norm(f"{ff}.0", R1_DIM) | {f"{ff}.1.weight": (R1_DIM, R1_DIM), f"{ff}.3.weight": (R1_DIM, R1_DIM)}
    return shapes | norm("d_layers.norm", R1_DIM)


def write_r1_checkpoint(folder: Path, shapes: dict[str, tuple], seed: int = 0) -> Path:
    """A HF folder as the reference publishes it: two safetensors shards, config.json, no tokenizer."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {
        k: torch.randint(0, NANO.window**4, s) if k.endswith("index") else torch.randn(s, generator=generator)
        for k, s in shapes.items()
    }
    folder.mkdir(parents=True)
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[: len(keys) // 2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[len(keys) // 2 :]}, str(folder / "model-00002-of-00002.safetensors"))
    config = {"model_type": "llava_phi", "architectures": ["segearth_r1"], "mm_projector_type": "SparseConv_1",
              "torch_dtype": "bfloat16", **R1_LLM}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def r1_config(folder: Path, **projector) -> Path:
    """The faithful config (experiments/segearth_r1) scaled down: swin nano, small head, projector and frame."""
    from framework.infer.convert import FAITHFUL_CONFIG

    cfg = {
        "base": str(FAITHFUL_CONFIG),
        "model": {
            "encoder": {"variant": "nano", "drop_path_rate": 0.0},
            "llm": {"gradient_checkpointing": False},
            "projector": {"dim": R1_DIM, "heads": R1_HEADS, "dim_head": R1_DIM_HEAD, **projector},
            "mask_head": NANO.head_config,
        },
        "data": {"image_size": 128},
    }
    path = folder / "r1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def r1(tmp_path_factory) -> tuple[Path, Path, Path, object]:
    folder = tmp_path_factory.mktemp("r1")
    src = write_r1_checkpoint(folder / "SegEarth-R1-EarthReason", segearth_r1_shapes())
    config = r1_config(folder)
    dst = folder / "bundle"
    return src, config, dst, convert_segearth_r1(src, dst, config=config)


def test_segearth_r1_every_tensor_is_converted_or_knowingly_discarded(r1) -> None:
    src, _, _, conversion = r1
    shapes = segearth_r1_shapes()
    discarded = {reason.split(" ")[0]: sorted(keys) for reason, keys in conversion.discarded.items()}
    assert len(discarded["index"]) == sum(NANO.depths)
    assert discarded["learned"] == ["predictor.query_embed.weight", "predictor.query_feat.weight"]
    assert discarded["query"] == ["predictor.SEG_query_embed.weight", "predictor.new_query_embed.weight"]
    assert len(discarded["SEG_proj"]) == 8 and discarded["seg_query"] == ["seg_query"]
    assert len(conversion.mapped) + sum(map(len, discarded.values())) == len(shapes)
    assert sorted(next(iter(conversion.approximated.values()))) == [
        f"model.mm_projector.norm{i}.{p}" for i in (1, 2) for p in ("bias", "weight")
    ]
    assert list(conversion.added) == ["llm.causal_lm.lm_head.bias"]


def test_segearth_r1_bundle_holds_every_tensor_in_its_place(r1) -> None:
    from safetensors.torch import load_file

    src, _, dst, _ = r1
    source = {**load_file(str(src / "model-00001-of-00002.safetensors")),
              **load_file(str(src / "model-00002-of-00002.safetensors"))}
    bundle = open_bundle(dst)
    assert bundle.config["model"]["llm"]["config"]["hidden_size"] == 64
    model = bundle.build()  # strict: no tensor of the model missing

    def same(param: torch.Tensor, key: str) -> None:
        torch.testing.assert_close(param.detach(), source[key], rtol=0, atol=0)

    same(model.encoder.layers[2].blocks[1].attn.qkv.weight, "model.vision_tower.layers.2.blocks.1.attn.qkv.weight")
    same(model.encoder.layers[1].downsample.reduction.weight, "model.vision_tower.layers.0.downsample.reduction.weight")
    same(model.compressor.body[0].weight, "model.mm_projector.proj1.weight")
    same(model.compressor.body[4].bias, "model.mm_projector.fc.bias")
    norm2 = source["model.mm_projector.norm2.weight"]
    torch.testing.assert_close(model.compressor.body[3].weight.detach(), norm2.mean((1, 2)))
    lm = model.llm.causal_lm
    same(lm.model.embed_tokens.weight, "model.embed_tokens.weight")
    same(lm.model.layers[1].self_attn.dense.weight, "model.layers.1.self_attn.dense.weight")
    same(lm.model.layers[0].mlp.fc1.bias, "model.layers.0.mlp.fc1.bias")
    same(lm.model.final_layernorm.weight, "model.final_layernorm.weight")
    same(lm.lm_head.weight, "lm_head.weight")
    assert not lm.lm_head.bias.any()
    projector = model.projector
    same(projector.origin.weight, "origin_SEG_token_projector.weight")
    same(projector.latent.bias, "text_projector.bias")
    same(projector.media[0].weight, "local_project.weight")
    same(projector.out.weight, "SEG_token_projector.weight")
    same(projector.fusion.layers[0][0].to_kv.weight, "d_layers.layers.0.0.to_kv.weight")
    same(projector.fusion.layers[0][1][3].weight, "d_layers.layers.0.1.3.weight")
    same(projector.fusion.norm.bias, "d_layers.norm.bias")
    head = model.mask_head
    same(head.pixel_decoder.adapter_1[0].weight, "pixel_decoder.adapter_1.0.weight")
    same(head.pixel_decoder.layer_1[1].bias, "pixel_decoder.layer_1.1.bias")
    same(head.pixel_decoder.level_embed, "pixel_decoder.transformer.level_embed")
    q = source["predictor.transformer_self_attention_layers.1.self_attn.in_proj_weight"][: NANO.hidden]
    torch.testing.assert_close(head.decoder.layers[1].self_attn.q_proj.weight.detach(), q, rtol=0, atol=0)
    same(head.decoder.mask_predictor.mask_embedder.layers[2].layers[0].weight, "predictor.mask_embed.layers.2.weight")


def test_segearth_r1_unknown_tensors_and_misfits_are_errors(r1, tmp_path) -> None:
    src, config, _, _ = r1
    shapes = segearth_r1_shapes() | {"model.mm_projector.extra.weight": (4,)}
    bad = write_r1_checkpoint(tmp_path / "extra", shapes)
    with pytest.raises(ConfigError, match=r"1 tensor\(s\) neither converted.*model\.mm_projector\.extra\.weight"):
        convert_segearth_r1(bad, tmp_path / "b1", config=config)
    with pytest.raises(ConfigError, match=r"does not fit .*r1\.yaml: projector\.out\.weight: \(32, 64\) in the "
                                          r"checkpoint, \(32, 96\) in the model; .*\(12 more\)"):
        convert_segearth_r1(src, tmp_path / "b2", config=r1_config(tmp_path, dim=48, dim_head=24))
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()
    (tmp_path / "noconfig").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        convert_segearth_r1(tmp_path / "noconfig", tmp_path / "b3", config=config)


def test_segearth_r1_command_and_prediction(r1, tmp_path, capsys) -> None:
    src, config, _, _ = r1
    dst = tmp_path / "r1-bundle"
    assert main(["convert", "segearth-r1", str(src), str(dst), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "approximated 4, LayerNorm([C,H,W]) affine averaged" in out and "added llm.causal_lm.lm_head.bias" in out
    assert "no tokenizer files" in out
    assert main(["convert", "segearth-r1", str(src), str(dst), "--config", str(config)]) == 2  # exists
    result = load_model(dst).predict(np.zeros((100, 120, 3), np.uint8), "Where could a seaplane land?")
    assert result.mask.shape == (100, 120)
