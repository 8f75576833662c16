import pytest
import torch

from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from tests.tiny import TINY_LLM, tiny_config

MASK2FORMER = {"name": "mask2former", "hidden_dim": 32, "mask_dim": 32, "dec_layers": 2, "enc_layers": 1,
               "dim_feedforward": 64, "enc_dim_feedforward": 64, "heads": 4}
WITH_IMAGE = dict(TINY_LLM, template="<image> <question>[SEG]")


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
    assert out.image_index.tolist() == [0, 1]  # no image_index: question i asks about image i


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


def test_one_image_pass_answers_new_questions():
    model = tiny_model(compressor={"name": "conv_stride", "ratio": 4}, llm=WITH_IMAGE).eval()
    images = torch.rand(2, 3, 64, 64)
    calls = []
    model.encoder.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        seen = model.see(images)
        first = model.answer(seen, ["where is water?", "which roads?"]).mask_logits
        again = model.answer(seen, ["which roads?", "which roads?"], torch.tensor([1, 0])).mask_logits
        direct = model(images, ["where is water?", "which roads?"]).mask_logits
    assert len(calls) == 2  # see once, forward once
    torch.testing.assert_close(first, direct)
    torch.testing.assert_close(again[0], first[1])


def test_image_index_must_name_the_images_of_the_batch():
    model = tiny_model().eval()
    seen = model.see(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="3 questions for 2 images and no image_index"):
        model.answer(seen, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"image_index of shape \(2,\) for 3 questions"):
        model.answer(seen, ["a", "b", "c"], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        model.answer(seen, ["a", "b"], torch.tensor([0, 2]))


def test_config_errors_at_assembly():
    with pytest.raises(ConfigError, match="level"):
        tiny_model(compressor={"name": "conv_stride", "ratio": 4, "level": 7}, llm=dict(TINY_LLM, template="<image> <question>"))
    with pytest.raises(ConfigError, match="prompt has no <image>"):
        tiny_model(compressor={"name": "conv_stride", "ratio": 4})
    with pytest.raises(ConfigError, match="compressor is null"):
        tiny_model(llm=WITH_IMAGE)
    with pytest.raises(ConfigError, match="frozen"):
        tiny_model(projector={"name": "mlp", "frozen": "yes"})
    with pytest.raises(ConfigError, match="unknown readout 'argmax'"):
        tiny_model(readout={"name": "argmax"})


def test_image_size_must_fit_the_strides():
    with pytest.raises(ValueError, match="divisible"):
        tiny_model()(torch.rand(1, 3, 60, 60), ["q"])


SHARING_VARIANTS = {
    "fpn with FiLM": {},
    "fpn without FiLM": {"mask_head": {"name": "fpn", "dim": 16, "query_dim": 32, "film": False}},
    "mask2former + compressor": {
        "mask_head": MASK2FORMER,
        "compressor": {"name": "avg_pool", "ratio": 4},
        "llm": WITH_IMAGE,
    },
    # the rows of an image ask the same concept queries: the head decodes once per distinct image
    "fpn, concept choice": {"readout": {"name": "concept_choice", "concepts": ["water", "road", "roof"]}},
}


@pytest.mark.parametrize("variant", list(SHARING_VARIANTS))
def test_questions_about_one_image_share_its_image_pass_with_the_outputs_and_gradients_of_separate_passes(variant):
    model = tiny_model(**SHARING_VARIANTS[variant]).eval()
    calls = {"encoder": [], "pixels": [], "compressor": [], "decode": []}
    model.encoder.register_forward_hook(lambda module, args, out: calls["encoder"].append(args[0].shape[0]))
    pixel_features, decode = model.mask_head.pixel_features, model.mask_head.decode
    model.mask_head.pixel_features = lambda f: calls["pixels"].append(f[0].shape[0]) or pixel_features(f)
    model.mask_head.decode = lambda p, q: calls["decode"].append(q.shape[0]) or decode(p, q)
    if model.compressor is not None:
        model.compressor.register_forward_hook(lambda module, args, out: calls["compressor"].append(args[0].shape[0]))
    images = torch.rand(2, 3, 64, 64)
    index = torch.tensor([1, 0, 1, 1, 0])
    questions = ["where is water?", "which roads?", "where are roofs?", "which roads?", "where is water?"]
    out = model(images, questions, index)
    assert calls["encoder"] == [2] and calls["pixels"] == [2]  # two distinct images
    # each question's own query is decoded per row; the concept queries of a choice read-out once per image
    assert calls["decode"] == [2 if variant == "fpn, concept choice" else 5]
    assert out.image_index.tolist() == index.tolist()  # rows grouped by image, for the competition loss
    assert calls["compressor"] == ([2] if model.compressor is not None else [])
    out.mask_logits.square().sum().backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    separate = torch.cat([model(images[i][None], [q]).mask_logits for i, q in zip(index.tolist(), questions)])
    torch.testing.assert_close(out.mask_logits, separate, rtol=1e-4, atol=1e-5)
    separate.square().sum().backward()
    for name, grad in shared.items():  # equal up to summation order
        reference = model.get_parameter(name).grad
        # + 1e-5: a bias right before a normalisation has an analytically zero gradient, here rounding noise
        assert (grad - reference).norm() <= 1e-4 * reference.norm() + 1e-5, name
