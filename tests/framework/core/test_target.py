"""The "no target" decision: its statistics, the decision, its fit to observed answers, and a tiny model with one
through fit, test and predict (N-acc / T-acc, per-sample probabilities, ``no_target`` in predictions)."""

import json

import pytest
import torch

from framework.cli.main import main
from framework.core.config import load_config
from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from framework.core.target import REJECTED_LOGIT, MaskStatisticsTarget, decide
from framework.infer.predictor import load_model
from tests.tiny import tiny_config, write_config


def test_statistics_are_the_max_the_top_fraction_mean_and_the_soft_area():
    logits = torch.full((1, 10, 10), -2.0)
    logits[0, 0, :5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    stats = MaskStatisticsTarget(top_fraction=0.02).statistics(logits)[0]  # top 2 of 100 pixels
    soft_area = (torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]).sigmoid().sum() + 95 * torch.tensor(-2.0).sigmoid()) / 100
    assert stats.tolist() == pytest.approx([5.0, 4.5, soft_area.item()])


def test_an_answer_below_the_threshold_becomes_empty_and_the_others_stay():
    decision = MaskStatisticsTarget()
    logits = torch.randn(3, 4, 4)
    probability = decision(logits).sigmoid()
    threshold = probability.sort().values[1].item()  # the lowest answer falls below, the other two do not
    decided, got = decide(decision, logits, threshold)
    rejected = probability < threshold
    assert torch.equal(got, probability) and rejected.sum() == 1
    assert (decided[rejected] == REJECTED_LOGIT).all() and torch.equal(decided[~rejected], logits[~rejected])
    assert decide(None, logits, 0.5) == (logits, None)


def test_before_its_first_fit_the_decision_is_the_reference_rule():
    logits = torch.full((2, 8, 8), -1.0)
    logits[0, 3, 3] = 0.5  # one pixel above 0: the reference's mask is not empty
    assert (MaskStatisticsTarget()(logits) > 0).tolist() == [True, False]


def test_the_decision_is_fitted_to_the_answers_it_observed():
    """Empty-target answers: uniformly low logits with a few stray high pixels that fool the reference's rule;
    target answers: a confident 4x4 blob at a random place. Observed in batches through a memory smaller than
    what was seen (the oldest are forgotten)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(96, 16, 16, generator=generator) - 3
    masks = torch.zeros(96, 16, 16, dtype=torch.bool)
    for i in range(96):
        r, c = torch.randint(0, 12, (2,), generator=generator).tolist()
        if i % 2:
            logits[i, r, c] = 1.0  # one stray positive pixel
        else:
            logits[i, r : r + 4, c : c + 4] += 6
            masks[i, r : r + 4, c : c + 4] = True
    decision = MaskStatisticsTarget(memory=64)
    assert (decision(logits) > 0).all()  # the reference's rule answers every one
    for start in range(0, 96, 8):
        decision.observe(logits[start : start + 8], masks[start : start + 8])
    statistics, present = decision.memory()
    assert len(present) == 64 and int(decision.seen) == 96
    assert torch.equal(statistics[:32], decision.statistics(logits[64:]))  # the ring overwrote the first 64
    assert decision.fit(statistics, present)
    assert torch.equal(decision(logits) > 0, masks.flatten(1).any(1))
    assert not MaskStatisticsTarget().fit(statistics[present == 1], present[present == 1])  # one class: kept


def test_the_decision_is_checked_with_the_config(tmp_path):
    cfg = tiny_config()
    cfg["model"]["target_decision"] = {"name": "mask_statistics", "memroy": 8}
    with pytest.raises(ConfigError, match="model.target_decision.memroy: unknown parameter.*did you mean 'memory'"):
        load_config(write_config(tmp_path / "c.yaml", cfg))
    cfg["model"]["target_decision"] = {"name": "mask_statistics", "top_fraction": 0}
    with pytest.raises(ConfigError, match=r"model.target_decision.top_fraction: expected a fraction in \(0, 1\]"):
        SegEarthModel(load_config(write_config(tmp_path / "c.yaml", cfg))["model"])


@pytest.mark.slow
def test_a_model_with_a_decision_reports_n_acc_t_acc_and_says_no_target(tmp_path, synth_root):
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    cfg["model"]["target_decision"] = {"name": "mask_statistics"}
    cfg["tracking"] = {"enabled": False}
    path = write_config(tmp_path / "tiny.yaml", cfg)
    assert main(["fit", str(path)]) == 0
    assert main(["test", str(path), "--ckpt", "last", "eval.target_threshold=1.0"]) == 0  # every answer rejected
    (run,) = (tmp_path / "runs" / "tiny").iterdir()
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(state["model.target_decision.seen"]) == 6  # 3 training batches of 2 observed
    results = json.loads((run / "results.json").read_text())["test"]
    metrics, samples = results["metrics"], results["samples"]
    assert metrics["n_acc"] == 1.0 and metrics["t_acc"] == 0.0 and metrics["giou"] == metrics["floor_empty_giou"]
    assert all(0 <= s["target_probability"] <= 1 for s in samples)
    assert all(s["pred_area"] == 0 and s["union"] == s["target_area"] for s in samples)  # all answered empty
    assert "| N-acc | T-acc |" in (run / "results.md").read_text()

    image = sorted((synth_root / "test" / "images").iterdir())[0]
    predictor = load_model(run / "checkpoints" / "last.ckpt")
    answer = predictor.predict(image, "Where are the buildings?")
    assert 0 <= answer.target_score <= 1 and answer.no_target == (answer.area_px == 0)
    record = load_model(run, target_threshold=1.0).predict(image, "Where are the buildings?").record()
    assert record["no_target"] is True and record["area_px"] == 0 and record["target_score"] < 1
    with pytest.raises(ConfigError, match=r"target threshold: expected a probability in \[0, 1\], got 2"):
        load_model(run, target_threshold=2)
