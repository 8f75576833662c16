"""The LightningModule under a real Trainer: frozen parts stay in eval mode, slim checkpoints round-trip,
the optimiser has per-slot groups and the schedule warms up then decays."""

import tempfile
from pathlib import Path

import lightning as L
import pytest
import torch

from framework.config import load_config
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import write_synthetic_dataset
from framework.task import SegEarthTask
from tests.tiny import tiny_config, write_config


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, n=6, seed=2, image_size=64)
    return root


class EncoderModeProbe(L.Callback):
    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self.modes.append(task.model.encoder.training)


def fit_tiny(cfg, tmp_path, callbacks=()):
    L.seed_everything(cfg["seed"], verbose=False)
    task = SegEarthTask(cfg)
    data = ReasoningDataModule(cfg["data"], seed=0)
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=list(callbacks), **cfg["trainer"]
    )
    trainer.fit(task, datamodule=data)
    return task, trainer


def test_frozen_encoder_stays_in_eval_mode_during_fit(synth_root, tmp_path):
    cfg = tiny_config(data={"root": str(synth_root)})
    cfg = _resolved(cfg)
    cfg["model"]["encoder"]["frozen"] = True
    probe = EncoderModeProbe()
    task, _ = fit_tiny(cfg, tmp_path, [probe])
    assert probe.modes and not any(probe.modes)


def test_slim_checkpoint_round_trip(synth_root, tmp_path):
    cfg = _resolved(tiny_config(data={"root": str(synth_root)}))
    cfg["model"]["llm"]["frozen"] = True
    task, trainer = fit_tiny(cfg, tmp_path)
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert not any(k.startswith("model.llm.") for k in ckpt["state_dict"])
    assert "llm" in ckpt["frozen_slots"]
    L.seed_everything(cfg["seed"], verbose=False)
    fresh = SegEarthTask(cfg)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])
    images = torch.rand(2, 3, 64, 64)
    task.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(task.model(images, ["a", "b"]).mask_logits, fresh.model(images, ["a", "b"]).mask_logits)
    # a frozen slot that differs from the one trained with is refused
    with torch.no_grad():
        next(fresh.model.llm.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="frozen slot 'llm'"):
        fresh.on_load_checkpoint(torch.load(path, weights_only=False))


def test_param_groups_and_warmup_cosine(synth_root, tmp_path):
    cfg = _resolved(tiny_config(data={"root": str(synth_root)}))
    cfg["optim"].update({"lr": 1.0, "slot_lr_scale": {"encoder": 0.1}, "warmup_ratio": 0.5})
    cfg["trainer"]["limit_train_batches"] = 4
    task, trainer = fit_tiny(cfg, tmp_path)
    opt = trainer.optimizers[0]
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"encoder", "llm", "projector", "mask_head"}
    sched = trainer.lr_scheduler_configs[0].scheduler
    factor = sched.lr_lambdas[0]
    assert factor(0) < factor(1) <= 1.0  # warm-up
    assert factor(4) == pytest.approx(0.0, abs=1e-9)  # cosine to the floor
    assert groups["encoder"]["initial_lr"] == pytest.approx(0.1)


def _resolved(cfg):
    """The tiny config with the schema's defaults filled in, as the CLI would load it."""
    return load_config(write_config(Path(tempfile.mkdtemp()) / "c.yaml", cfg), validate_components=False)
