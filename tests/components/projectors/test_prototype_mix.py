"""prototype_mix: every query is a convex mixture of the learned prototypes, chosen by the description alone."""

from __future__ import annotations

import pytest
import torch

from components.projectors.prototype_mix import PrototypeMixProjector
from framework.core.contracts import LLMOutput
from framework.core.errors import ConfigError


def llm_output(pooled: torch.Tensor) -> LLMOutput:
    return LLMOutput(pooled=pooled, tokens=pooled[:, None], token_mask=torch.ones(len(pooled), 1, dtype=torch.bool))


def projector(**kwargs) -> PrototypeMixProjector:
    torch.manual_seed(0)
    return PrototypeMixProjector(text_dim=6, feature_channels=[3], feature_strides=[4], out_dim=5, **kwargs)


def test_queries_are_convex_mixtures_of_the_prototypes_and_ignore_the_image() -> None:
    module = projector(prototypes=7, hidden=8)
    llm = llm_output(torch.randn(3, 6) * 10)
    with torch.no_grad():
        weights = module.weights(llm)
        first = module(llm, [torch.randn(3, 3, 4, 4)])
        second = module(llm, [torch.randn(3, 3, 8, 8)])
    assert weights.shape == (3, 7)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert first.shape == (3, 1, 5)
    torch.testing.assert_close(first[:, 0], weights @ module.prototypes)
    assert torch.equal(first, second)


def test_a_low_temperature_picks_one_prototype() -> None:
    module = projector(prototypes=4, hidden=8, temperature=1e-4)
    llm = llm_output(torch.randn(5, 6))
    with torch.no_grad():
        queries = module(llm, [])[:, 0]
        chosen = module.select(llm.pooled).argmax(dim=1)
    torch.testing.assert_close(queries, module.prototypes[chosen].detach())


@pytest.mark.parametrize(("kwargs", "message"), [({"prototypes": 0}, "prototypes"), ({"temperature": 0.0}, "temperature")])
def test_bad_settings_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=f"projector.{message}"):
        projector(**kwargs)
