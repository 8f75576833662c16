"""The Mask2Former head: queries drive the masks, masked attention, equality with transformers' own Mask2Former,
weights loading, the deformable attention against a direct implementation, golden outputs, the faithful size."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerModel, multi_scale_deformable_attention

from components.mask_heads._msdeform_reference import multi_scale_deformable_attention_reference
from components.mask_heads.mask2former import Mask2FormerHead
from framework.core.errors import ConfigError
from tests.golden import assert_golden, set_weights

CHANNELS = [8, 16, 24, 32]
STRIDES = [4, 8, 16, 32]


def small_head(**overrides) -> Mask2FormerHead:
    torch.manual_seed(0)
    config = Mask2FormerHead.example_config() | overrides
    return Mask2FormerHead(in_channels=CHANNELS, strides=STRIDES, **config).eval()


def features(batch: int, size: int, seed: int = 0, channels: list[int] = CHANNELS) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // s, size // s, generator=generator) for c, s in zip(channels, STRIDES)]


def test_one_prediction_before_and_one_after_each_layer() -> None:
    head = small_head(dec_layers=3)
    assert head.query_dim == 32 and head.output_stride == 4
    out = head(features(2, 64), torch.randn(2, 3, 32))
    assert out.masks.shape == (2, 3, 16, 16)
    assert len(out.aux) == 3 and all(a.shape == (2, 3, 16, 16) for a in out.aux)


def test_the_queries_decide_the_masks() -> None:
    head = small_head()
    maps = features(1, 64)
    query = torch.randn(1, 1, 32)
    with torch.no_grad():
        first, again, other = head(maps, query), head(maps, query), head(maps, query + torch.randn(1, 1, 32))
    torch.testing.assert_close(first.masks, again.masks)
    assert (first.masks - other.masks).abs().max() > 1e-3
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(first.aux, other.aux, strict=True))


def captured_cross_attention_masks(head: Mask2FormerHead, maps, queries) -> tuple[list[torch.Tensor], object]:
    masks = []

    def keep(_module, _args, kwargs) -> None:
        masks.append(kwargs["encoder_attention_mask"].clone())

    hooks = [layer.register_forward_pre_hook(keep, with_kwargs=True) for layer in head.decoder.layers]
    with torch.no_grad():
        out = head(maps, queries)
    for hook in hooks:
        hook.remove()
    return masks, out


def test_masked_attention_follows_the_previous_prediction() -> None:
    head = small_head()
    set_weights(head, seed=5)
    queries = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(5))
    masks, out = captured_cross_attention_masks(head, features(2, 64), queries)
    predictions = [*out.aux, out.masks]
    sizes = [(2, 2), (4, 4), (8, 8)]  # round-robin from the coarsest level (stride 32 of a 64 px image)
    for layer, mask in enumerate(masks):
        small = F.interpolate(predictions[layer], size=sizes[layer % 3], mode="bilinear", align_corners=False)
        blocked = (small.sigmoid() < 0.5).flatten(2).repeat_interleave(head.decoder.config.num_attention_heads, 0)
        blocked &= ~blocked.all(-1, keepdim=True)  # a query that would see nothing sees everything
        assert mask.shape[-1] == sizes[layer % 3][0] * sizes[layer % 3][1]
        torch.testing.assert_close(mask.bool(), blocked)
        assert 0 < mask.float().mean() < 1


def test_a_query_whose_mask_is_empty_attends_everywhere() -> None:
    head = small_head()
    with torch.no_grad():  # mask features all 1, mask embedding all -1: every first logit is -mask_dim
        head.pixel_decoder.mask_projection.weight.zero_()
        head.pixel_decoder.mask_projection.bias.fill_(1.0)
        last = head.decoder.mask_predictor.mask_embedder.layers[-1].layers[0]
        last.weight.zero_()
        last.bias.fill_(-1.0)
    masks, out = captured_cross_attention_masks(head, features(1, 64), torch.randn(1, 1, 32))
    assert (out.aux[0] == -32).all()
    assert not masks[0].bool().any()


def test_equals_transformers_mask2former_with_its_learned_queries(tmp_path) -> None:
    """transformers' own Mask2FormerModel, its query positions set to zero, predicts what our head predicts from
    that model's saved weights, its backbone's maps and its learned queries."""
    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_config={"model_type": "swin", "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1],
                         "out_features": ["stage1", "stage2", "stage3", "stage4"]},
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_layers=1, decoder_layers=3,
        num_attention_heads=4, dim_feedforward=64, encoder_feedforward_dim=64, num_queries=2,
    )
    reference = Mask2FormerModel(config).eval()
    with torch.no_grad():
        reference.transformer_module.queries_embedder.weight.zero_()
    reference.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every kept key matches, everything else is knowingly dropped
        head = Mask2FormerHead(in_channels=[8, 16, 32, 64], strides=STRIDES, weights=str(tmp_path),
                               **Mask2FormerHead.example_config()).eval()
    pixels = torch.rand(2, 3, 64, 64)
    queries = reference.transformer_module.queries_features.weight.expand(2, -1, -1)
    with torch.no_grad():
        expected = reference(pixels).masks_queries_logits
        backbone_maps = reference.pixel_level_module.encoder(pixels).feature_maps
        out = head(list(backbone_maps), queries)
    assert len(expected) == 3
    for got, want in zip([*out.aux, out.masks], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_weights_problems_are_reported(tmp_path) -> None:
    state = small_head().state_dict()
    key = "decoder.layers.0.fc1.weight"
    torch.save(dict(state, **{key: torch.ones(3, 3)}), tmp_path / "wrong.pth")
    with pytest.raises(ConfigError, match=r"decoder\.layers\.0\.fc1\.weight.*\(3, 3\).*\(64, 32\)"):
        small_head(weights=str(tmp_path / "wrong.pth"))
    shallow = small_head(dec_layers=1).state_dict()  # its decoder keys named as in transformers' checkpoints
    torch.save({("model.transformer_module." if k.startswith("decoder.") else "") + k: v for k, v in shallow.items()},
               tmp_path / "shallow.pth")
    with pytest.warns(UserWarning, match=r"decoder\.layers\.1\."):
        small_head(weights=str(tmp_path / "shallow.pth"))
    with pytest.raises(ConfigError, match="holds none of"):
        small_head(weights=str(tmp_path))


@pytest.mark.parametrize(
    "overrides,message",
    [({"hidden_dim": 48}, "multiple of 32"), ({"heads": 5}, "multiple of 32"), ({"dec_layers": -1}, ">= 0")],
)
def test_config_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        small_head(**overrides)


def test_encoder_strides_must_halve_below_the_deformable_levels() -> None:
    with pytest.raises(ConfigError, match="do not halve"):
        Mask2FormerHead(in_channels=CHANNELS, strides=[4, 16, 32, 64], **Mask2FormerHead.example_config())
    head = Mask2FormerHead(in_channels=CHANNELS[1:], strides=[8, 16, 32], **Mask2FormerHead.example_config())
    assert head.output_stride == 8


def test_deformable_attention_matches_a_direct_implementation() -> None:
    generator = torch.Generator().manual_seed(5)
    shapes = [(7, 9), (4, 5), (2, 3)]
    batch, queries, heads, head_dim, points = 2, 11, 8, 4, 4
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, head_dim, generator=generator)
    # locations partly outside [0, 1]: those samples read zeros
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    direct = multi_scale_deformable_attention_reference(value, shapes, locations, weights)
    assert fast.shape == direct.shape == (batch, queries, heads * head_dim)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-5)
    inside = (locations >= 0).all(-1) & (locations <= 1).all(-1)
    assert 0 < inside.float().mean() < 1


# mean, mean |x|, RMS and three entries of each prediction; computed once with the code of 2026-11-27
GOLDEN = [
    [0.00786639, 0.0397234, 0.0506778, 0.109641, 0.0688225, -0.0251699],
    [-0.0162645, 0.0383364, 0.0487558, 0.0616476, 0.0479452, -0.0547716],
    [-0.0233502, 0.0350938, 0.0439297, 0.0253151, 0.00648965, -0.0471519],
]


def test_golden_outputs() -> None:
    head = small_head()
    set_weights(head, seed=6)
    queries = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = head(features(2, 64, seed=8), queries)
    for prediction, golden in zip([*out.aux, out.masks], GOLDEN, strict=True):
        assert_golden(prediction, golden)


@pytest.mark.slow
def test_reference_size() -> None:
    swin_b = [128, 256, 512, 1024]
    torch.manual_seed(0)
    head = Mask2FormerHead(in_channels=swin_b, strides=STRIDES).eval()
    assert sum(p.numel() for p in head.parameters()) == 19_951_808
    assert len(head.pixel_decoder.encoder.layers) == 6 and len(head.decoder.layers) == 9
    with torch.no_grad():
        out = head(features(1, 128, channels=swin_b), torch.randn(1, 1, 256))
    assert out.masks.shape == (1, 1, 32, 32) and len(out.aux) == 9
