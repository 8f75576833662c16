import pytest
import torch

from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from tests.tiny import TINY_LLM, tiny_config


def tiny_model(**model_overrides) -> SegEarthModel:
    cfg = tiny_config()["model"]
    cfg.update(model_overrides)
    torch.manual_seed(0)
    return SegEarthModel(cfg)


def test_forward_shapes_and_stride():
    model = tiny_model()
    out = model(torch.rand(2, 3, 64, 64), ["where is water?", "which roads?"])
    assert out.mask_logits.shape == (2, 16, 16) and out.output_stride == 4
    assert all(a.shape == (2, 16, 16) for a in out.aux_logits)
    assert torch.isfinite(out.mask_logits).all()


def test_frozen_slot_gets_no_gradient_and_stays_in_eval_mode():
    enc = {"name": "efficientnet_lite", "variant": 0, "pretrained": False, "frozen": True}
    model = tiny_model(encoder=enc)
    model.train()
    assert not model.encoder.training and model.mask_head.training
    out = model(torch.rand(2, 3, 64, 64), ["a", "b"])
    out.mask_logits.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.mask_head.parameters())


def test_encoder_runs_once_per_forward_with_a_compressor():
    llm = dict(TINY_LLM, template="<image> Question: <question>[SEG]")
    model = tiny_model(compressor={"name": "conv_stride", "ratio": 4, "level": -1}, llm=llm)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    model(torch.rand(1, 3, 64, 64), ["q"])
    assert len(calls) == 1


def test_features_can_be_reused_for_new_questions():
    model = tiny_model().eval()
    images = torch.rand(1, 3, 64, 64)
    feats = model.encode(images)
    with torch.no_grad():
        a = model(images, ["where is water?"]).mask_logits
        b = model(None, ["where is water?"], features=feats).mask_logits
    torch.testing.assert_close(a, b)


def test_config_errors_at_assembly():
    with pytest.raises(ConfigError, match="level"):
        tiny_model(compressor={"name": "conv_stride", "ratio": 4, "level": 7}, llm=dict(TINY_LLM, template="<image> <question>"))
    with pytest.raises(ConfigError, match="prompt has no <image>"):
        tiny_model(compressor={"name": "conv_stride", "ratio": 4})
    with pytest.raises(ConfigError, match="compressor is null"):
        tiny_model(llm=dict(TINY_LLM, template="<image> <question>[SEG]"))
    with pytest.raises(ConfigError, match="frozen"):
        tiny_model(projector={"name": "mlp", "frozen": "yes"})


def test_image_size_must_fit_the_strides():
    with pytest.raises(ValueError, match="divisible"):
        tiny_model()(torch.rand(1, 3, 60, 60), ["q"])


SHARING_VARIANTS = {
    "fpn with FiLM": {},
    "fpn without FiLM": {"mask_head": {"name": "fpn", "dim": 16, "query_dim": 32, "film": False}},
    "mask2former + compressor": {
        "mask_head": {"name": "mask2former", "hidden_dim": 32, "mask_dim": 32, "dec_layers": 2,
                      "enc_layers": 1, "dim_feedforward": 64, "enc_dim_feedforward": 64, "heads": 4},
        "compressor": {"name": "avg_pool", "ratio": 4},
        "llm": dict(TINY_LLM, template="<image> <question>[SEG]"),
    },
    # the rows of an image ask the same concept queries: the whole head runs once per distinct image
    "fpn, concept choice": {"concepts": ["water", "road", "roof"], "concept_readout": "choice"},
}


@pytest.mark.parametrize("variant", list(SHARING_VARIANTS))
def test_identical_images_run_the_image_only_slots_once_with_the_same_outputs_and_gradients(variant):
    model = tiny_model(**SHARING_VARIANTS[variant]).eval()
    calls = {"encoder": [], "pixels": [], "compressor": []}
    model.encoder.register_forward_hook(lambda module, args, out: calls["encoder"].append(args[0].shape[0]))
    pixel_features, decode = model.mask_head.pixel_features, model.mask_head.decode
    model.mask_head.pixel_features = lambda f: calls["pixels"].append(f[0].shape[0]) or pixel_features(f)
    model.mask_head.decode = lambda p, q: calls.setdefault("decode", []).append(q.shape[0]) or decode(p, q)
    if model.compressor is not None:
        model.compressor.register_forward_hook(lambda module, args, out: calls["compressor"].append(args[0].shape[0]))
    a, b = torch.rand(2, 3, 64, 64).unbind(0)
    images = torch.stack([b, a, b, b, a])
    questions = ["where is water?", "which roads?", "where are roofs?", "which roads?", "where is water?"]
    out = model(images, questions)
    assert calls["encoder"] == [2] and calls["pixels"] == [2]  # two distinct images
    # each question's own query is decoded per row; the concept queries of a choice read-out once per image
    assert calls["decode"] == [2 if model.concept_queries is not None else 5]
    assert out.image_index.tolist() == [0, 1, 0, 0, 1]  # rows grouped by image, for the competition loss
    assert calls["compressor"] == ([2] if model.compressor is not None else [])
    out.mask_logits.square().sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    separate = torch.cat([model(img[None], [q]).mask_logits for img, q in zip(images, questions)])
    torch.testing.assert_close(out.mask_logits, separate, rtol=1e-4, atol=1e-5)
    separate.square().sum().backward()
    for name, grad in shared.items():  # equal up to summation order
        reference = model.get_parameter(name).grad
        # + 1e-5: a bias right before a normalisation has an analytically zero gradient, here rounding noise
        assert (grad - reference).norm() <= 1e-4 * reference.norm() + 1e-5, name


def test_concept_queries_ask_the_head_in_training_instead_of_the_projector():
    model = tiny_model(concepts=["water", "road"])
    images = torch.rand(1, 3, 64, 64).expand(3, -1, -1, -1)
    questions = ["where is water?", "where could a boat sail?", "which roads?"]
    ids = model.concept_queries.ids(["water", "water", "road"])
    out = model(images, questions, concept_ids=ids)
    # two phrasings of one concept ask the head the same thing; the projector's own queries still differ
    torch.testing.assert_close(out.mask_logits[0], out.mask_logits[1])
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[2])
    assert not torch.allclose(out.queries[0], out.queries[1])
    torch.testing.assert_close(out.teacher_queries[:, 0], model.concept_queries.queries.weight[[0, 0, 1]])
    out.mask_logits.sum().backward()  # the masks train the head and the concept queries, not the projector
    assert all(p.grad is None for p in model.projector.parameters())
    assert model.concept_queries.queries.weight.grad.abs().sum() > 0
    plain = model(images, questions)  # without concept ids (evaluation, prediction): the projector's queries ask
    assert plain.teacher_queries is None and not torch.allclose(plain.mask_logits[0], plain.mask_logits[1])


def test_concept_choice_is_the_log_odds_of_the_concept_winning_the_pixel():
    from framework.core.model import ConceptQueries

    masks = torch.randn(4, 3, 5, 6, dtype=torch.float64) * 4
    ids = torch.tensor([0, 2, 1, 2])
    # a pixel's (K+1)-way softmax over the concepts and a background 0; log p/(1-p) of the chosen concept
    scores = torch.cat([masks, torch.zeros(4, 1, 5, 6, dtype=torch.float64)], dim=1)
    probs = scores.softmax(dim=1)[torch.arange(4), ids]
    choice = ConceptQueries.choose(masks, ids)
    torch.testing.assert_close(choice, torch.log(probs / (1 - probs)))
    # p > 1/2 for one concept at most: no pixel is claimed twice, and some by none (the background)
    claims = torch.stack([ConceptQueries.choose(masks, torch.full((4,), k)) > 0 for k in range(3)]).sum(dim=0)
    assert claims.max() == 1 and claims.min() == 0


def test_concept_choice_routes_each_question_to_its_nearest_concept():
    model = tiny_model(concepts=["water", "road", "field"], concept_readout="choice")
    images = torch.rand(1, 3, 64, 64).expand(3, -1, -1, -1)
    questions = ["where is water?", "where could a boat sail?", "which roads?"]
    with torch.no_grad():  # put the concepts where the projector's queries are: question 2 nearest field
        queries = model(images, questions).queries[:, 0]
        model.concept_queries.queries.weight.copy_(queries[[0, 2, 1]] + 1e-3)
    out = model(images, questions)
    assert out.routed.tolist() == [0, 2, 1] and out.teacher_queries is None
    every = model.mask_head(model.encode(images), model.concept_queries.all_queries(3)).masks
    torch.testing.assert_close(out.mask_logits, model.concept_queries.choose(every, out.routed))
    # the two questions routed to different concepts of one image never both claim a pixel
    assert not ((out.mask_logits[1] > 0) & (out.mask_logits[2] > 0)).any()
    # training: the sample's own concept answers (no routing), and the masks train the head and every concept
    trained = model(images, questions, concept_ids=model.concept_queries.ids(["water", "water", "road"]))
    assert trained.routed is None
    torch.testing.assert_close(trained.mask_logits[0], trained.mask_logits[1])
    trained.mask_logits.sum().backward()
    assert all(p.grad is None for p in model.projector.parameters())
    assert (model.concept_queries.queries.weight.grad.abs().sum(1) > 0).all()


def test_concept_query_errors():
    from framework.core.errors import DataError

    model = tiny_model(concepts=["water", "road"])
    with pytest.raises(DataError, match=r"'', 'field', not in \['water', 'road'\].*names none"):
        model.concept_queries.ids(["water", "field", ""])
    with pytest.raises(ConfigError, match="distinct"):
        tiny_model(concepts=["water", "water"])
    with pytest.raises(ConfigError, match="distinct, non-empty"):
        tiny_model(concepts=[])
    with pytest.raises(ConfigError, match="concept_readout: expected one of projector, choice, got 'argmax'"):
        tiny_model(concepts=["water"], concept_readout="argmax")
    with pytest.raises(ConfigError, match="concept_readout: 'choice' needs model.concepts"):
        tiny_model(concept_readout="choice")
