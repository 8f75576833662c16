"""Every registered component of every slot honours its slot contract (timm style: parametrized over the registries).

Each component is built from its ``example_config()`` plus injected arguments from small fake neighbours, run at two
input sizes (resolution-agnostic), and checked for output shapes, finite values, and a finite gradient on every
trainable parameter after a backward pass through all of its outputs. Parameters that legitimately get no gradient
must be named in the component's ``unused_parameters`` class attribute.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch
from torch import nn

import components  # noqa: F401  (registers every component)
from framework.core.contracts import Compressor, Encoder, LanguageModel, LLMOutput, MaskHead, MaskHeadOutput, Projector
from framework.core.registry import SLOT_REGISTRIES as SLOTS
from framework.core.rows import map_tensors
from framework.core.slots import SLOT_NAMES

FEATURE_CHANNELS = [16, 24, 40, 80]
FEATURE_STRIDES = [4, 8, 16, 32]
TEXT_DIM = 32
QUERY_OUT_DIM = 24
IMAGE_SIZES_AND_BATCHES = ((64, 2), (96, 1))
QUESTIONS = ["where is water?", "a longer question about roads"]


def registered(slot: str) -> list:
    return [pytest.param(name, id=f"{slot}:{name}") for name in SLOTS[slot].names()]


def build(slot: str, name: str, **injected) -> nn.Module:
    torch.manual_seed(0)
    config = SLOTS[slot].get(name).example_config()
    assert isinstance(config, dict), f"{slot} '{name}'.example_config() must return a dict"
    return SLOTS[slot].build({"name": name, **config}, **injected)


def assert_finite(tensors: Iterable[torch.Tensor]) -> None:
    for tensor in tensors:
        assert torch.isfinite(tensor).all(), "non-finite output"


def assert_all_parameters_get_gradients(module: nn.Module, outputs: Iterable[torch.Tensor]) -> None:
    # Random weights: a plain mean would send a constant gradient, which any normalisation layer cancels.
    torch.stack([(out.float() * torch.randn_like(out.float())).mean() for out in outputs]).sum().backward()
    declared = set(getattr(module, "unused_parameters", ()))
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad and n not in declared]
    no_gradient = [n for n, p in trainable if p.grad is None]
    assert not no_gradient, f"trainable parameters without a gradient: {no_gradient[:10]}"
    non_finite = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not non_finite, f"non-finite gradients: {non_finite[:10]}"


def assert_reached_by_gradient(tensor: torch.Tensor, what: str) -> None:
    assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), f"{what}: no finite gradient"
    assert tensor.grad.abs().sum() > 0, f"{what} does not influence the output"


def fake_features(batch: int, size: int) -> list[torch.Tensor]:
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(FEATURE_CHANNELS, FEATURE_STRIDES, strict=True)]


def fake_llm_output(batch: int) -> LLMOutput:
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[-1, 3:] = False
    return LLMOutput(
        pooled=torch.randn(batch, TEXT_DIM, requires_grad=True),
        tokens=torch.randn(batch, 5, TEXT_DIM, requires_grad=True),
        token_mask=mask,
    )


INTERFACES = {"encoder": Encoder, "compressor": Compressor, "llm": LanguageModel, "projector": Projector,
              "mask_head": MaskHead}


def test_every_slot_has_a_registry_and_every_component_its_slots_interface() -> None:
    assert tuple(SLOTS) == SLOT_NAMES == ("encoder", "compressor", "llm", "projector", "mask_head")
    for slot, registry in SLOTS.items():
        for name in registry.names():
            assert issubclass(registry.get(name), INTERFACES[slot]), f"{slot} '{name}'"


@pytest.mark.parametrize("name", registered("encoder"))
def test_encoder_contract(name: str) -> None:
    encoder = build("encoder", name)
    assert len(encoder.channels) == len(encoder.strides) >= 1
    assert encoder.strides[0] == 4 and encoder.strides == sorted(set(encoder.strides))
    for size, batch in IMAGE_SIZES_AND_BATCHES:
        features = encoder(torch.rand(batch, 3, size, size))
        expected = [(batch, c, size // s, size // s) for c, s in zip(encoder.channels, encoder.strides, strict=True)]
        assert [tuple(f.shape) for f in features] == expected
        assert_finite(features)
    assert_all_parameters_get_gradients(encoder, features)


@pytest.mark.parametrize("name", registered("compressor"))
def test_compressor_contract(name: str) -> None:
    compressor = build("compressor", name, in_channels=16, out_dim=TEXT_DIM)
    for (h, w), batch in (((8, 8), 2), ((5, 7), 1)):
        feature = torch.randn(batch, 16, h, w, requires_grad=True)
        tokens = compressor(feature)
        assert tuple(tokens.shape) == (batch, compressor.num_tokens(h, w), TEXT_DIM)
        assert_finite([tokens])
    assert_all_parameters_get_gradients(compressor, [tokens])
    assert_reached_by_gradient(feature, "the feature map")


def check_llm_output(out: LLMOutput, batch: int, hidden: int) -> None:
    assert out.pooled.shape == (batch, hidden)
    assert out.tokens.ndim == 3 and out.tokens.shape[0] == batch and out.tokens.shape[2] == hidden
    assert out.token_mask.dtype == torch.bool and out.token_mask.shape == out.tokens.shape[:2]
    assert out.token_mask.any(dim=1).all(), "every sample needs at least one description token"
    assert_finite([out.pooled, out.tokens[out.token_mask]])


@pytest.mark.parametrize("name", registered("llm"))
def test_llm_contract(name: str) -> None:
    llm = build("llm", name)
    hidden = llm.hidden_size
    # A prompt either takes visual tokens or (null compressor) must be given none.
    uses_image = llm.uses_image

    def visual_tokens(batch: int) -> torch.Tensor | None:
        return torch.randn(batch, 3, hidden, requires_grad=True) if uses_image else None

    for questions in (QUESTIONS[:1], QUESTIONS):
        out = llm(questions=questions, visual_tokens=visual_tokens(len(questions)), answers=None)
        check_llm_output(out, len(questions), hidden)
        assert out.lm_loss is None
    visual = visual_tokens(len(QUESTIONS))
    out = llm(questions=QUESTIONS, visual_tokens=visual, answers=["the lake", "no target"])
    check_llm_output(out, len(QUESTIONS), hidden)
    assert out.lm_loss is not None and out.lm_loss.ndim == 0 and torch.isfinite(out.lm_loss)
    assert_all_parameters_get_gradients(llm, [out.pooled, out.tokens[out.token_mask], out.lm_loss])
    if visual is not None:
        assert_reached_by_gradient(visual, "the visual tokens")


@pytest.mark.parametrize("name", registered("projector"))
def test_projector_contract(name: str) -> None:
    projector = build(
        "projector",
        name,
        text_dim=TEXT_DIM,
        feature_channels=FEATURE_CHANNELS,
        feature_strides=FEATURE_STRIDES,
        out_dim=QUERY_OUT_DIM,
    )
    query_counts = set()
    for size, batch in IMAGE_SIZES_AND_BATCHES:
        llm_output = fake_llm_output(batch)
        queries = projector(llm_output, fake_features(batch, size))
        assert queries.ndim == 3 and queries.shape[0] == batch and queries.shape[2] == QUERY_OUT_DIM
        query_counts.add(queries.shape[1])
        assert_finite([queries])
    assert len(query_counts) == 1, f"the number of queries changed with the input size: {query_counts}"
    assert_all_parameters_get_gradients(projector, [queries])
    described = [t.grad for t in (llm_output.pooled, llm_output.tokens) if t.grad is not None]
    assert any(g.abs().sum() > 0 for g in described), "the queries do not depend on the description"


@pytest.mark.parametrize("name", registered("mask_head"))
def test_mask_head_contract(name: str) -> None:
    head = build("mask_head", name, in_channels=FEATURE_CHANNELS, strides=FEATURE_STRIDES)
    for (size, batch), num_queries in zip(IMAGE_SIZES_AND_BATCHES, (1, 2), strict=True):
        queries = torch.randn(batch, num_queries, head.query_dim, requires_grad=True)
        out = head(fake_features(batch, size), queries)
        assert isinstance(out, MaskHeadOutput)
        side = size // head.output_stride
        assert tuple(out.masks.shape) == (batch, num_queries, side, side)
        assert all(tuple(a.shape) == (batch, num_queries, side, side) for a in out.aux)
        assert_finite([out.masks, *out.aux])
    assert_all_parameters_get_gradients(head, [out.masks, *out.aux])
    assert_reached_by_gradient(queries, "the queries")
    # the model runs pixel_features once per distinct image and gathers its rows to the questions
    head.eval()
    maps, rows = fake_features(2, 64), torch.tensor([1, 0, 1])
    queries = torch.randn(3, 1, head.query_dim)
    with torch.no_grad():
        direct = head([f[rows] for f in maps], queries)
        split = head.decode(map_tensors(lambda t: t[rows], head.pixel_features(maps)), queries)
    torch.testing.assert_close(split.masks, direct.masks, rtol=1e-4, atol=1e-5)
