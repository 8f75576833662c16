"""The read-outs: the projector's queries, concept queries as the projector's teacher, and the per-pixel concept
choice."""

import pytest
import torch

from framework.core.errors import ConfigError, DataError
from framework.core.readout import ConceptChoiceReadout, chosen_targets
from tests.framework.core.test_model import tiny_model

QUESTIONS = ["where is water?", "where could a boat sail?", "which roads?"]


def one_image() -> torch.Tensor:
    return torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def projector_queries(model, images, questions):
    seen = model.see(images)
    return model.projector(model.llm(questions, None, None), [f.expand(len(questions), -1, -1, -1) for f in seen.features])


def test_the_query_readout_asks_the_head_with_the_projectors_queries():
    model = tiny_model().eval()
    images, index = one_image(), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        out = model(images, QUESTIONS, index)
        queries = projector_queries(model, images, QUESTIONS)
        seen = model.see(images)
        direct = model.mask_head([f.expand(3, -1, -1, -1) for f in seen.features], queries).masks[:, 0]
    torch.testing.assert_close(out.mask_logits, direct)
    assert out.terms == {} and out.notes == {}


def test_concept_queries_ask_the_head_in_training_instead_of_the_projector():
    model = tiny_model(readout={"name": "concept_teacher", "concepts": ["water", "road"]})
    images, index = one_image(), torch.zeros(3, dtype=torch.long)
    out = model(images, QUESTIONS, index, concepts=["water", "water", "road"])
    # two phrasings of one concept ask the head the same thing
    torch.testing.assert_close(out.mask_logits[0], out.mask_logits[1])
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[2])
    queries = projector_queries(model, images, QUESTIONS)
    teacher = model.readout.queries.weight[[0, 0, 1]].detach()
    torch.testing.assert_close(out.terms["concept_query"], torch.nn.functional.mse_loss(queries[:, 0], teacher))
    out.mask_logits.sum().backward()  # the masks train the head and the concept queries, not the projector
    assert all(p.grad is None for p in model.projector.parameters())
    assert model.readout.queries.weight.grad.abs().sum() > 0
    plain = model(images, QUESTIONS, index)  # no concepts (evaluation, prediction): the projector's queries ask
    assert plain.terms == {} and not torch.allclose(plain.mask_logits[0], plain.mask_logits[1])


def test_concept_choice_is_the_log_odds_of_the_concept_winning_the_pixel():
    masks = torch.randn(4, 3, 5, 6, dtype=torch.float64) * 4
    ids = torch.tensor([0, 2, 1, 2])
    # a pixel's (K+1)-way softmax over the concepts and a background 0; log p/(1-p) of the chosen concept
    scores = torch.cat([masks, torch.zeros(4, 1, 5, 6, dtype=torch.float64)], dim=1)
    probs = scores.softmax(dim=1)[torch.arange(4), ids]
    choice = ConceptChoiceReadout.choose(masks, ids)
    torch.testing.assert_close(choice, torch.log(probs / (1 - probs)))
    # p > 1/2 for one concept at most: no pixel is claimed twice, and some by none (the background)
    claims = torch.stack([ConceptChoiceReadout.choose(masks, torch.full((4,), k)) > 0 for k in range(3)]).sum(dim=0)
    assert claims.max() == 1 and claims.min() == 0


def test_concept_choice_routes_each_question_to_its_nearest_concept():
    model = tiny_model(readout={"name": "concept_choice", "concepts": ["water", "road", "field"]})
    images, index = one_image(), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():  # put the concepts where the projector's queries are: question 2 nearest field
        queries = projector_queries(model, images, QUESTIONS)[:, 0]
        model.readout.queries.weight.copy_(queries[[0, 2, 1]] + 1e-3)
    out = model(images, QUESTIONS, index)
    assert out.notes["routed"] == ["water", "field", "road"] and out.terms == {}
    seen = model.see(images)
    every = model.mask_head.decode(seen.pixels, model.readout.queries.weight[None]).masks.expand(3, -1, -1, -1)
    torch.testing.assert_close(out.mask_logits, ConceptChoiceReadout.choose(every, torch.tensor([0, 2, 1])))
    # the two questions routed to different concepts of one image never both claim a pixel
    assert not ((out.mask_logits[1] > 0) & (out.mask_logits[2] > 0)).any()
    # training: the sample's own concept answers (no routing), and the masks train the head and every concept
    trained = model(images, QUESTIONS, index, concepts=["water", "water", "road"])
    assert "routed" not in trained.notes and "concept_query" in trained.terms
    torch.testing.assert_close(trained.mask_logits[0], trained.mask_logits[1])
    trained.mask_logits.sum().backward()
    assert all(p.grad is None for p in model.projector.parameters())
    assert (model.readout.queries.weight.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("name", ["concept_teacher", "concept_choice"])
def test_concept_readout_errors(name):
    model = tiny_model(readout={"name": name, "concepts": ["water", "road"]})
    with pytest.raises(DataError, match=r"'', 'field', not in \['water', 'road'\].*names none"):
        model.readout.ids(["water", "field", ""])
    with pytest.raises(ConfigError, match="distinct"):
        tiny_model(readout={"name": name, "concepts": ["water", "water"]})
    with pytest.raises(ConfigError, match="distinct, non-empty"):
        tiny_model(readout={"name": name, "concepts": []})
    with pytest.raises(ConfigError, match=f"model.readout: readout '{name}' needs concepts"):
        tiny_model(readout={"name": name})


def test_the_targets_readout_adds_scored_target_masks_beside_the_query_readouts_union():
    plain = tiny_model().eval()
    torch.manual_seed(0)
    model = tiny_model(readout={"name": "targets", "targets": 5, "layers": 1, "heads": 2}).eval()
    # the union path is the query read-out's: same parameters, same answer mask
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("readout.")})
    images, index = one_image(), torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        out, union = model(images, QUESTIONS, index), plain(images, QUESTIONS, index)
    torch.testing.assert_close(out.mask_logits, union.mask_logits)
    assert out.target_logits.shape == (3, 5, *out.mask_logits.shape[-2:])
    assert out.target_scores.shape == (3, 5) and union.target_logits is None
    # the target queries read the image: another image moves them
    with torch.no_grad():
        other = model(torch.rand(1, 3, 64, 64), QUESTIONS, index)
    assert not torch.allclose(out.target_scores, other.target_scores)


def test_the_targets_readout_refuses_impossible_settings():
    with pytest.raises(ConfigError, match="targets must be >= 1"):
        tiny_model(readout={"name": "targets", "targets": 0})
    with pytest.raises(ConfigError, match="level"):
        tiny_model(readout={"name": "targets", "level": 9})


def test_chosen_targets_are_the_probable_queries_of_answered_rows_most_probable_first():
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.1], [3.0, 3.0, 3.0, 3.0], [-2.0, -2.0, -2.0, -2.0]])
    chosen = chosen_targets(scores, torch.tensor([True, False, True]))
    assert [c.tolist() for c in chosen] == [[2, 0, 3], [], []]
