"""Every shipped experiment loads and validates (its components' signatures included), every sweep file loads with
every trial it can make, and the experiments small enough for a CPU build and answer a question."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framework.core.config import load_config
from framework.core.model import SegEarthModel
from framework.sweep.spec import load_sweep

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SWEEPS = EXPERIMENTS / "sweeps"
CONFIGS = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if SWEEPS not in p.parents)
# Built here: the pretrained CPU-sized ones. The segearth_r1 configs are Swin-B + Phi-1.5 (1.3 B parameters):
# tests/framework/core/test_faithful_model.py builds and trains that one, marked slow.
BUILT = ("demo.yaml", "dubai/dubai.yaml", "dubai/closed_set.yaml")


def name(path: Path) -> str:
    return str(path.relative_to(EXPERIMENTS))


def test_the_shipped_experiments_are_all_here():
    assert {name(p) for p in CONFIGS} >= {*BUILT, "segearth_r1/earthreason.yaml", "segearth_r1/24gb.yaml"}
    assert list(SWEEPS.glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=name)
def test_every_experiment_loads_and_validates(path: Path):
    cfg = load_config(path)  # schema, every section's values, every component's parameters
    assert cfg["name"] and cfg["model"]["encoder"]["name"]


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=name)
def test_every_sweep_loads_with_each_trial_it_can_make(path: Path):
    spec = load_sweep(path)
    assert spec.space and spec.n_trials >= 1


@pytest.mark.slow
@pytest.mark.parametrize("experiment", BUILT)
def test_cpu_sized_experiments_build_and_answer(experiment: str):
    cfg = load_config(EXPERIMENTS / experiment)
    torch.manual_seed(0)
    model = SegEarthModel(cfg["model"]).eval()
    size = cfg["data"]["image_size"]
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size), ["Where is the water?", "Where are the roads?"], torch.tensor([0, 0]))
    stride = out.output_stride
    assert out.mask_logits.shape == (2, size // stride, size // stride) and torch.isfinite(out.mask_logits).all()
