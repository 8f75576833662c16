"""``segearth convert mask2former``: a detectron2 Mask2Former checkpoint (names and shapes as detectron2's modules
make them, at nano size) lands tensor by tensor in the real swin encoder and mask2former head."""

from __future__ import annotations

import argparse
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from components.encoders.swin import SwinEncoder
from components.mask_heads.mask2former import Mask2FormerHead
from framework.convert import add_convert_parser, convert_mask2former, read_detectron2_checkpoint
from framework.errors import ConfigError

# Swin "nano" (our variant) with detectron2's Mask2Former head layout at small widths; FFN widths, mask width and
# hidden width all differ so that a tensor landing in the wrong place shows up as a shape or value mismatch.
EMBED, DEPTHS, SWIN_HEADS, WINDOW = 32, (2, 2, 2, 2), (1, 2, 4, 8), 7
HIDDEN, MASK_DIM, HEADS, POINTS, ENC_LAYERS, ENC_FF, DEC_LAYERS, DEC_FF = 32, 64, 4, 4, 1, 48, 2, 80
QUERIES, CLASSES = 5, 7
HEAD_CONFIG = {
    "hidden_dim": HIDDEN, "mask_dim": MASK_DIM, "enc_layers": ENC_LAYERS, "dec_layers": DEC_LAYERS,
    "dim_feedforward": DEC_FF, "enc_dim_feedforward": ENC_FF, "heads": HEADS,
}
CHANNELS = [EMBED * 2**i for i in range(4)]
STRIDES = [4, 8, 16, 32]
PIX, PRED = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."


def linear(name: str, n_out: int, n_in: int) -> dict[str, tuple]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def norm(name: str, n: int) -> dict[str, tuple]:
    return {f"{name}.weight": (n,), f"{name}.bias": (n,)}


def multihead_attention(name: str, n: int) -> dict[str, tuple]:
    return {f"{name}.in_proj_weight": (3 * n, n), f"{name}.in_proj_bias": (3 * n,), **linear(f"{name}.out_proj", n, n)}


def detectron2_shapes() -> dict[str, tuple]:
    """Names and shapes of a Mask2Former (D2SwinTransformer + MSDeformAttnPixelDecoder +
    MultiScaleMaskedTransformerDecoder) state dict, in detectron2's module order."""
    shapes: dict[str, tuple] = {"backbone.patch_embed.proj.weight": (EMBED, 3, 4, 4), "backbone.patch_embed.proj.bias":
                                (EMBED,), **norm("backbone.patch_embed.norm", EMBED)}
    for i, (depth, heads, c) in enumerate(zip(DEPTHS, SWIN_HEADS, CHANNELS)):
        for j in range(depth):
            block = f"backbone.layers.{i}.blocks.{j}"
            shapes |= norm(f"{block}.norm1", c)
            shapes[f"{block}.attn.relative_position_bias_table"] = ((2 * WINDOW - 1) ** 2, heads)
            shapes[f"{block}.attn.relative_position_index"] = (WINDOW**2, WINDOW**2)
            shapes |= linear(f"{block}.attn.qkv", 3 * c, c) | linear(f"{block}.attn.proj", c, c)
            shapes |= norm(f"{block}.norm2", c) | linear(f"{block}.mlp.fc1", 4 * c, c) | linear(f"{block}.mlp.fc2", c, 4 * c)
        if i < 3:  # the original Swin merges patches at the end of a stage
            shapes[f"backbone.layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            shapes |= norm(f"backbone.layers.{i}.downsample.norm", 4 * c)
    for i, c in enumerate(CHANNELS):
        shapes |= norm(f"backbone.norm{i}", c)
    for k, c in enumerate(CHANNELS[:0:-1]):  # res5, res4, res3: from low to high resolution
        shapes |= {f"{PIX}input_proj.{k}.0.weight": (HIDDEN, c, 1, 1), f"{PIX}input_proj.{k}.0.bias": (HIDDEN,)}
        shapes |= norm(f"{PIX}input_proj.{k}.1", HIDDEN)
    shapes[f"{PIX}transformer.level_embed"] = (3, HIDDEN)
    for i in range(ENC_LAYERS):
        layer = f"{PIX}transformer.encoder.layers.{i}"
        shapes |= linear(f"{layer}.self_attn.sampling_offsets", HEADS * 3 * POINTS * 2, HIDDEN)
        shapes |= linear(f"{layer}.self_attn.attention_weights", HEADS * 3 * POINTS, HIDDEN)
        shapes |= linear(f"{layer}.self_attn.value_proj", HIDDEN, HIDDEN)
        shapes |= linear(f"{layer}.self_attn.output_proj", HIDDEN, HIDDEN) | norm(f"{layer}.norm1", HIDDEN)
        shapes |= linear(f"{layer}.linear1", ENC_FF, HIDDEN) | linear(f"{layer}.linear2", HIDDEN, ENC_FF)
        shapes |= norm(f"{layer}.norm2", HIDDEN)
    shapes |= {f"{PIX}mask_features.weight": (MASK_DIM, HIDDEN, 1, 1), f"{PIX}mask_features.bias": (MASK_DIM,)}
    shapes |= {f"{PIX}adapter_1.weight": (HIDDEN, CHANNELS[0], 1, 1), **norm(f"{PIX}adapter_1.norm", HIDDEN)}
    shapes |= {f"{PIX}layer_1.weight": (HIDDEN, HIDDEN, 3, 3), **norm(f"{PIX}layer_1.norm", HIDDEN)}
    for i in range(DEC_LAYERS):
        shapes |= multihead_attention(f"{PRED}transformer_self_attention_layers.{i}.self_attn", HIDDEN)
        shapes |= norm(f"{PRED}transformer_self_attention_layers.{i}.norm", HIDDEN)
        shapes |= multihead_attention(f"{PRED}transformer_cross_attention_layers.{i}.multihead_attn", HIDDEN)
        shapes |= norm(f"{PRED}transformer_cross_attention_layers.{i}.norm", HIDDEN)
        shapes |= linear(f"{PRED}transformer_ffn_layers.{i}.linear1", DEC_FF, HIDDEN)
        shapes |= linear(f"{PRED}transformer_ffn_layers.{i}.linear2", HIDDEN, DEC_FF)
        shapes |= norm(f"{PRED}transformer_ffn_layers.{i}.norm", HIDDEN)
    shapes |= norm(f"{PRED}decoder_norm", HIDDEN)
    shapes |= {f"{PRED}query_feat.weight": (QUERIES, HIDDEN), f"{PRED}query_embed.weight": (QUERIES, HIDDEN)}
    shapes[f"{PRED}level_embed.weight"] = (3, HIDDEN)
    shapes |= linear(f"{PRED}class_embed", CLASSES + 1, HIDDEN)
    shapes |= linear(f"{PRED}mask_embed.layers.0", HIDDEN, HIDDEN) | linear(f"{PRED}mask_embed.layers.1", HIDDEN, HIDDEN)
    shapes |= linear(f"{PRED}mask_embed.layers.2", MASK_DIM, HIDDEN)
    shapes["criterion.empty_weight"] = (CLASSES + 1,)
    return shapes


def fake_checkpoint(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        key: rng.integers(0, WINDOW**4, shape) if key.endswith("index") else rng.standard_normal(shape, np.float32)
        for key, shape in detectron2_shapes().items()
    }


def write_pkl(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    with path.open("wb") as f:  # the model zoo's layout
        pickle.dump({"model": arrays, "__author__": "test", "matching_heuristics": True}, f)
    return path


def load_components(weights: Path) -> tuple[SwinEncoder, Mask2FormerHead]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no weight left at its initial value, no converted tensor unused
        encoder = SwinEncoder(variant="nano", weights=str(weights))
        head = Mask2FormerHead(in_channels=CHANNELS, strides=STRIDES, weights=str(weights), **HEAD_CONFIG)
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
    assert len(discarded["index"]) == sum(DEPTHS)
    assert sorted(discarded["learned"]) == [f"{PRED}query_embed.weight", f"{PRED}query_feat.weight"]
    assert sorted(discarded["COCO"]) == [f"{PRED}class_embed.bias", f"{PRED}class_embed.weight"]
    assert discarded["loss"] == ["criterion.empty_weight"]
    assert len(conversion.mapped) + sum(map(len, discarded.values())) == len(source)
    # q, k, v of each self-attention are one tensor in detectron2, three in transformers
    assert len(conversion.tensors) == len(conversion.mapped) + 2 * 2 * DEC_LAYERS


def test_the_components_load_it_with_every_tensor_in_its_place(source, converted) -> None:
    dst, conversion = converted
    encoder, head = load_components(dst)
    assert {k for k in conversion.tensors if k.startswith("encoder.")} == {f"encoder.{k}" for k in encoder.state_dict()}
    assert {k for k in conversion.tensors if k.startswith("mask_head.")} == {f"mask_head.{k}" for k in head.state_dict()}

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
    same(deformable.self_attn.sampling_offsets.weight, f"{PIX}transformer.encoder.layers.0.self_attn.sampling_offsets.weight")
    same(deformable.self_attn_layer_norm.bias, f"{PIX}transformer.encoder.layers.0.norm1.bias")
    same(deformable.fc2.weight, f"{PIX}transformer.encoder.layers.0.linear2.weight")
    same(deformable.final_layer_norm.weight, f"{PIX}transformer.encoder.layers.0.norm2.weight")
    same(pixel.mask_projection.weight, f"{PIX}mask_features.weight")
    same(pixel.adapter_1[0].weight, f"{PIX}adapter_1.weight")
    same(pixel.layer_1[1].bias, f"{PIX}layer_1.norm.bias")

    layer = head.decoder.layers[1]
    in_proj = torch.from_numpy(source[f"{PRED}transformer_self_attention_layers.1.self_attn.in_proj_weight"])
    in_bias = torch.from_numpy(source[f"{PRED}transformer_self_attention_layers.1.self_attn.in_proj_bias"])
    for i, proj in enumerate((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)):
        torch.testing.assert_close(proj.weight.detach(), in_proj[i * HIDDEN : (i + 1) * HIDDEN], rtol=0, atol=0)
        torch.testing.assert_close(proj.bias.detach(), in_bias[i * HIDDEN : (i + 1) * HIDDEN], rtol=0, atol=0)
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
    original = nn.MultiheadAttention(HIDDEN, HEADS)
    original.load_state_dict({k[len(prefix) :]: torch.from_numpy(v) for k, v in source.items() if k.startswith(prefix)})
    generator = torch.Generator().manual_seed(0)
    x, pos = torch.randn(3, 2, HIDDEN, generator=generator), torch.randn(3, 2, HIDDEN, generator=generator)
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
    broken = dict(source, **{key: np.zeros((3 * HIDDEN + 3, HIDDEN), np.float32)})
    with pytest.raises(ConfigError, match=rf"{key}' has shape \(99, 32\), expected \(96, 32\)"):
        convert_mask2former(write_pkl(tmp_path / "b.pkl", broken), tmp_path / "b.safetensors")
    # the converted file into a head of other widths
    with pytest.raises(ConfigError, match=r"encoder\.layers\.0\.fc1\.(weight|bias)' has shape \(48,.*expects \(64,"):
        Mask2FormerHead(in_channels=CHANNELS, strides=STRIDES, weights=str(converted[0]),
                        **(HEAD_CONFIG | {"enc_dim_feedforward": 64}))


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
    add_convert_parser(parser.add_subparsers(dest="command", required=True))
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
