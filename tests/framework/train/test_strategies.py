"""Training options at scale: the non-finite loss guard (stop or skip), strategies by name (FSDP / DeepSpeed built
where their packages allow), precision reaching the modules, gradient checkpointing per slot, a bf16 frozen
encoder."""

import importlib.util

import lightning as L
import pytest
import torch

from framework.core.config import load_config
from framework.core.errors import ConfigError
from framework.core.model import SegEarthModel
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import write_synthetic_dataset
from framework.train.checkpointing import checkpoint_callbacks
from framework.train.strategies import NonFiniteLoss, build_strategy, fit_trainer_kwargs, trainer_kwargs
from framework.train.task import SegEarthTask
from tests.tiny import tiny_config, write_config


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """A resolved tiny config (8 training samples, batch 2: 4 steps an epoch); returns a fresh copy per call."""
    tmp = tmp_path_factory.mktemp("training")
    write_synthetic_dataset(tmp / "data", n=12, seed=1, image_size=64, samples_per_scene=1)
    cfg = tiny_config(data={"root": str(tmp / "data"), "train_questions": "first"})
    cfg["trainer"].update(limit_train_batches=None, max_epochs=1)
    path = write_config(tmp / "tiny.yaml", cfg)
    return lambda *overrides: load_config(path, list(overrides))


class PoisonBatch(L.Callback):
    """Fills the images of training batch ``at`` with NaN and records the trainable weights around it."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.ids: list[int] = []
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def _weights(self, task) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        if batch_idx == self.at:
            batch["image"].fill_(float("nan"))
            self.ids = batch["id"].tolist()
            self.before = self._weights(task)

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        if batch_idx == self.at:
            self.after = self._weights(task)


def fit(cfg, tmp_path, *callbacks):
    L.seed_everything(0, verbose=False)
    task = SegEarthTask(cfg)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[*checkpoint_callbacks(tmp_path / "checkpoints", every_n_steps=1), *callbacks],
        **fit_trainer_kwargs(trainer_kwargs(cfg), task.model),
    )
    trainer.fit(task, datamodule=ReasoningDataModule(cfg["data"]))
    return task, trainer


def test_nonfinite_loss_stops_naming_step_samples_and_checkpoint(resolved, tmp_path):
    poison = PoisonBatch(at=2)
    with pytest.raises(NonFiniteLoss) as error:
        fit(resolved(), tmp_path, poison)
    message = str(error.value)
    assert "at step 2 (epoch 0)" in message and f"samples {sorted(poison.ids)}" in message
    assert f"last good checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}" in message
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_nonfinite_loss_skips_the_step_by_config(resolved, tmp_path):
    poison = PoisonBatch(at=1)
    task, trainer = fit(resolved("optim.on_nonfinite=skip"), tmp_path, poison)
    assert task.skipped_steps == 1
    for name, value in poison.before.items():  # the poisoned step changed nothing
        assert torch.equal(poison.after[name], value), name
    assert all(torch.isfinite(p).all() for p in task.parameters())
    state = trainer.optimizers[0].state_dict()["state"]
    assert {int(s["step"]) for s in state.values()} == {3}  # 4 batches, one step left out
    assert trainer.global_step == 4  # Lightning still counts the batch


def test_nonfinite_mode_is_checked(resolved):
    with pytest.raises(ConfigError, match="optim.on_nonfinite: expected one of stop, skip, got 'ignore'"):
        resolved("optim.on_nonfinite=ignore")


def test_strategies_build(resolved):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    cfg = resolved("model.encoder.frozen=true", "model.encoder.dtype=bfloat16")
    model = SegEarthModel(cfg["model"])
    assert build_strategy("auto", model) == "auto"
    ddp = build_strategy("ddp", model)
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["find_unused_parameters"]
    fsdp = build_strategy("fsdp", model)
    assert isinstance(fsdp, FSDPStrategy) and fsdp.kwargs["use_orig_params"]
    policy = fsdp.kwargs["auto_wrap_policy"]
    wrapped = {type(m).__name__ for m in model.modules() if policy(m, recurse=False, nonwrapped_numel=0)}
    assert {"LlamaDecoderLayer"} | {type(m).__name__ for m in model.slots().values()} <= wrapped
    # the DDP trainer builds on CPU; Lightning's FSDP needs CUDA devices
    trainer = L.Trainer(accelerator="cpu", devices=2, logger=False, **fit_trainer_kwargs({"strategy": "ddp"}, model))
    assert isinstance(trainer.strategy, DDPStrategy)
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
@pytest.mark.parametrize("name", ["deepspeed_stage_2", "deepspeed_stage_3"])
def test_deepspeed_without_the_package_is_a_config_error(resolved, name):
    with pytest.raises(ConfigError, match="needs the deepspeed package"):
        build_strategy(name, SegEarthModel(resolved()["model"]))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
@pytest.mark.parametrize("name", ["deepspeed_stage_2", "deepspeed_stage_3"])
def test_deepspeed_strategies_build(resolved, name):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    trainer = L.Trainer(logger=False, strategy=build_strategy(name, SegEarthModel(resolved()["model"])))
    assert isinstance(trainer.strategy, DeepSpeedStrategy)


class DtypeProbe(L.Callback):
    """Output dtypes of the first layer of each slot in the first training step."""

    def __init__(self) -> None:
        self.dtypes: dict[str, torch.dtype] = {}

    def on_train_start(self, trainer, task):
        for slot, module in task.model.slots().items():
            layer = next(m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
            layer.register_forward_hook(lambda m, i, o, slot=slot: self._record(slot, o))

    def _record(self, slot: str, output: torch.Tensor) -> None:
        self.dtypes.setdefault(slot, output.dtype)


@pytest.mark.parametrize(("precision", "dtype"), [("32", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_precision_reaches_the_modules(resolved, tmp_path, precision, dtype):
    probe = DtypeProbe()
    task, _ = fit(resolved(f"trainer.precision={precision}", "trainer.limit_train_batches=1", "trainer.limit_val_batches=0"), tmp_path, probe)
    assert probe.dtypes == {slot: dtype for slot in ("encoder", "llm", "projector", "mask_head")}
    assert all(p.dtype == torch.float32 for p in task.parameters())  # mixed precision: fp32 master weights


def _grads(cfg, images, questions) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SegEarthModel(cfg["model"]).train()
    model(images, questions).mask_logits.sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_grad_checkpointing_per_slot_gives_the_same_gradients(resolved):
    plain, ckpt = resolved(), resolved("model.llm.grad_checkpointing=true")
    plain["model"]["encoder"] = {"name": "swin", "variant": "nano", "drop_path_rate": 0.0}
    ckpt["model"]["encoder"] = {**plain["model"]["encoder"], "grad_checkpointing": True}
    model = SegEarthModel(ckpt["model"])
    assert all(stage.grad_checkpointing for stage in model.encoder.layers)
    assert model.llm.causal_lm.is_activation_checkpointing
    images, questions = torch.rand(2, 3, 64, 64), ["where is the river?", "which roofs are red?"]
    expected, got = _grads(plain, images, questions), _grads(ckpt, images, questions)
    assert expected.keys() == got.keys() and any(k.startswith("encoder.") for k in got)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, msg=name)
    with pytest.raises(ConfigError, match="projector.grad_checkpointing: component .* does not support it"):
        SegEarthModel(resolved("model.projector.grad_checkpointing=true")["model"])


def test_frozen_encoder_in_bfloat16(resolved):
    with pytest.raises(ConfigError, match="need frozen: true"):
        resolved("model.encoder.dtype=bfloat16")
    cfg = resolved("model.encoder.frozen=true", "model.encoder.dtype=bfloat16")
    model = SegEarthModel(cfg["model"])
    assert {p.dtype for p in model.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.mask_head.parameters()} == {torch.float32}
    features = model.encode(torch.rand(1, 3, 64, 64))
    assert {f.dtype for f in features} == {torch.float32}  # handed on as the images came, to fp32 modules
