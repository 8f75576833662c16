"""Weight averaging (``optim.ema_decay``): the update rule with its warm-up, frozen slots left out, and under a
real Trainer an average that follows the weights after every optimiser step, is what validation scores, and is
what the checkpoints give to ``segearth test`` and predict (exact resume: tests/framework/train/test_checkpointing.py)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from framework.core.config import load_config, with_defaults
from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from framework.core.weights import load_checkpoint_model
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import write_synthetic_dataset
from framework.train.task import SegEarthTask
from framework.train.weight_average import WeightAverage
from tests.tiny import tiny_config, write_config


def moved_after_start(decay: float, move) -> tuple[nn.Linear, WeightAverage, torch.Tensor]:
    """A linear layer whose average started at its initial weight (returned), then the weight changed by ``move``."""
    model = nn.Linear(2, 1)
    ema = WeightAverage(decay)
    ema.start(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        move(model.weight)
    return model, ema, start


def test_update_follows_the_warmed_up_decay():
    model, ema, start = moved_after_start(0.9, lambda w: w.add_(1.0))
    ema.update(step=0)  # warm-up: d = min(0.9, 1/10) = 0.1, so the average moves 90 % of the way
    assert torch.allclose(ema.average["weight"], start + 0.9)
    ema.update(step=1000)  # d = 0.9
    assert torch.allclose(ema.average["weight"], start + 0.9 + 0.1 * 0.1)


def test_swap_exchange_and_copy():
    model, ema, trained = moved_after_start(0.5, lambda w: w.mul_(3))
    live = model.weight.detach().clone()
    ema.swap()
    assert torch.equal(model.weight, trained) and torch.equal(ema.average["weight"], live)
    ema.swap()
    assert torch.equal(model.weight, live)
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    held = ema.exchange(state)
    assert torch.equal(state["model.weight"], trained) and torch.equal(held["model.weight"], live)
    ema.copy_to_model()
    assert torch.equal(model.weight, trained)


def test_frozen_slots_and_the_fitted_target_decision_are_not_averaged():
    cfg = tiny_config()
    cfg["model"]["encoder"]["frozen"] = True
    cfg["model"]["target_decision"] = {"name": "mask_statistics"}
    ema = WeightAverage(0.9)
    ema.start(SegEarthModel(with_defaults(cfg)["model"]))
    assert ema.average and not any(k.startswith(("encoder.", "target_decision.")) for k in ema.average)
    assert any(k.startswith("mask_head.") for k in ema.average)


def test_bad_decay_and_sharded_strategies(tmp_path):
    with pytest.raises(ConfigError, match=r"optim.ema_decay must be in \[0, 1\)"):
        load_config(write_config(tmp_path / "c.yaml", tiny_config(optim={"lr": 1e-3, "ema_decay": 1.0})))
    cfg = tiny_config(optim={"lr": 1e-3, "ema_decay": 0.9})
    cfg["trainer"]["strategy"] = "fsdp"
    with pytest.raises(ConfigError, match="optim.ema_decay works with strategy auto, ddp or ddp_spawn, not fsdp"):
        load_config(write_config(tmp_path / "c.yaml", cfg))


class WeightsAfterEachStep(L.Callback):
    """The trained weights as the optimiser left them after each step, and the weights each validation used."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def _weights(task) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in task.model.state_dict().items() if v.is_floating_point()}

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.steps.append(self._weights(task))

    def on_validation_batch_start(self, trainer, task, batch, batch_idx, dataloader_idx=0):
        self.validated.append(self._weights(task))


@pytest.mark.slow
def test_fit_validates_and_checkpoints_the_average(tmp_path):
    write_synthetic_dataset(tmp_path / "data", n=6, seed=2, image_size=64)
    raw = tiny_config(data={"root": str(tmp_path / "data")}, optim={"lr": 1e-2, "ema_decay": 0.8})
    raw["trainer"].update(max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    cfg = load_config(write_config(tmp_path / "c.yaml", raw), validate_components=False)
    L.seed_everything(0, verbose=False)
    task = SegEarthTask(cfg)
    initial = {k: v.detach().clone() for k, v in task.model.state_dict().items() if v.is_floating_point()}
    probe = WeightsAfterEachStep()
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[probe], **cfg["trainer"])
    trainer.fit(task, datamodule=ReasoningDataModule(cfg["data"], seed=0))
    assert len(probe.steps) == 6

    expected = dict(initial)
    for step, weights in enumerate(probe.steps):  # Lightning's global_step before it counts the step
        decay = min(0.8, (1 + step) / (10 + step))
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in expected}
        if step == 2:  # the end of the first epoch: its validation scored the average
            assert all(torch.allclose(probe.validated[0][k], expected[k], atol=1e-6) for k in expected)
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")  # Lightning's own, saved at the end of the last epoch
    checkpoint = torch.load(path, weights_only=False)
    averaged = list(expected)  # the tiny config trains every slot
    for k in averaged:
        assert torch.allclose(task.model.state_dict()[k], expected[k], atol=1e-6), k  # fit leaves the average
    assert not torch.allclose(expected["mask_head.mask_embed.2.weight"], probe.steps[-1]["mask_head.mask_embed.2.weight"])

    model, _ = load_checkpoint_model(path)  # what test, predict and export load
    for k in averaged:
        assert torch.allclose(model.state_dict()[k], expected[k], atol=1e-6), k
    held = checkpoint["ema_training_weights"]  # to resume: the weights the optimiser left
    assert all(torch.equal(held[f"model.{k}"], probe.steps[-1][k]) for k in averaged)


def test_checkpoint_configs_from_before_a_key_existed_get_its_default(tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_config()), validate_components=False)
    del cfg["optim"]["ema_decay"], cfg["eval"]["tta"]
    filled = with_defaults(cfg)
    assert filled["optim"]["ema_decay"] == 0.0 and filled["eval"]["tta"] == "none"
    assert filled["model"] == cfg["model"]
