"""The LightningModule under a real Trainer: frozen parts stay in eval mode, slim checkpoints round-trip,
the optimiser has per-slot groups and the schedule warms up then decays, and evaluation scores each sample at its
native resolution too."""

import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from framework.core.config import load_config
from framework.core.errors import UserError
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import CLASS_CONCEPTS, RELATIONAL_CONCEPTS, write_synthetic_dataset
from framework.eval.postprocess import unletterbox
from framework.eval.tta import averaged_output
from framework.train import losses
from framework.train.task import SegEarthTask
from tests.tiny import TINY_IMAGE_PATH, count_rows, tiny_config, write_config


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(root, n=6, seed=2, image_size=64)
    return root


NATIVE_SHAPE = (60, 96)  # (H, W) of the cropped test images: letterboxed into 64² with 12 rows of padding each side


@pytest.fixture(scope="module")
def nonsquare_root(tmp_path_factory):
    """Synthetic scenes whose test images, labels and instance maps are cropped to a landscape 96×60, so the letterbox pads."""
    root = tmp_path_factory.mktemp("nonsquare")
    write_synthetic_dataset(root, n=6, seed=3, image_size=96, samples_per_scene=5)
    top = (96 - NATIVE_SHAPE[0]) // 2
    for folder in ("images", "labels", "instances"):
        for path in (root / "test" / folder).iterdir():
            Image.open(path).crop((0, top, NATIVE_SHAPE[1], top + NATIVE_SHAPE[0])).save(path)
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
    with pytest.raises(UserError, match="frozen slot 'llm'"):
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


def evaluation_task(root, **eval_cfg):
    """A random-init tiny task whose threshold sits at the median logit of the first test sample, so its masks
    are neither empty nor full, and its test datamodule."""
    cfg = _resolved(tiny_config(data={"root": str(root), "eval_batch_size": 3}))
    cfg["eval"].update(eval_cfg)
    L.seed_everything(cfg["seed"], verbose=False)
    task = SegEarthTask(cfg).eval()
    data = ReasoningDataModule(cfg["data"], seed=0)
    item = data.dataset("test")[0]
    with torch.no_grad():
        cfg["eval"]["threshold"] = float(task.model(item["image"][None], [item["question"]]).mask_logits.median())
    return task, data


@pytest.mark.parametrize("tta", ["none", "flips"])
def test_native_metrics_score_the_original_pixels(nonsquare_root, tmp_path, tta):
    """Per sample, the counts of the mask cut out of the letterbox; with ``eval.tta`` of the mean view logits."""
    task, data = evaluation_task(nonsquare_root, tta=tta)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, **task.config["trainer"])
    trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)
    metrics, rows = task.results["test"]["metrics"], task.results["test"]["samples"]
    n = len(data.dataset("test"))
    assert n % 3 and metrics["n"] == metrics["native/n"] == n  # a short last batch
    assert [r["id"] for r in rows] == list(range(n))

    # the same batches again: cut the logits out of the letterbox, compare with the label files as stored
    labels = nonsquare_root / "test" / "labels"
    ious = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            logits = averaged_output(task.model, batch["image"], batch["question"], batch["image_index"], tta).mask_logits
            for k, i in enumerate(batch["id"].tolist()):
                truth = torch.from_numpy(np.asarray(Image.open(labels / f"{batch['stem'][k]}.png")) > 0)
                assert truth.shape == NATIVE_SHAPE
                (pred,) = unletterbox(logits[k : k + 1], batch["box"][k : k + 1], [NATIVE_SHAPE], 64,
                                      task.config["eval"]["threshold"])
                inter, union = int((pred & truth).sum()), int((pred | truth).sum())
                assert (rows[i]["native/inter"], rows[i]["native/union"]) == (inter, union), i
                ious.append(inter / union if union else 1.0)
    assert metrics["native/giou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert 0 < metrics["native/giou"] < 1
    assert any(r["native/union"] != r["union"] for r in rows)  # two frames, two sets of counts
    assert metrics["native/floor_empty_giou"] == metrics["floor_empty_giou"]  # same samples, same empty targets


def test_native_off_still_keeps_the_overlay_predictions(nonsquare_root, tmp_path):
    task, data = evaluation_task(nonsquare_root, native=False, overlays=2)
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, **task.config["trainer"])
    trainer.test(task, dataloaders=data.test_dataloader(), verbose=False)
    assert not any(k.startswith("native/") for k in task.results["test"]["metrics"])
    assert "native/iou" not in task.results["test"]["samples"][0]
    assert sorted(task.overlay_predictions) == [0, 1]
    assert all(m.shape == NATIVE_SHAPE and m.dtype == bool for m in task.overlay_predictions.values())


def _resolved(cfg):
    """The tiny config with the schema's defaults filled in, as the CLI would load it."""
    return load_config(write_config(Path(tempfile.mkdtemp()) / "c.yaml", cfg), validate_components=False)


def test_competition_term_groups_the_rows_the_model_saw_as_one_image(synth_root):
    cfg = _resolved(tiny_config(data={"root": str(synth_root)}))
    cfg["loss"]["competition_weight"] = 1.0
    task = SegEarthTask(cfg)
    a, b = torch.rand(2, 3, 64, 64).unbind(0)
    masks = torch.zeros(4, 64, 64)
    masks[0, :32], masks[1, 32:], masks[2, :, :32] = 1, 1, 1
    index = torch.tensor([0, 0, 1, 1])
    out = task.model(torch.stack([a, b]), ["water?", "roads?", "water?", "fields?"], index)
    terms = task._loss(out, masks, point_sampled=False)
    expected = torch.stack([
        losses.competition_loss(out.mask_logits[:2], masks[:2], torch.zeros(2, dtype=torch.long)),
        losses.competition_loss(out.mask_logits[2:], masks[2:], torch.zeros(2, dtype=torch.long)),
    ]).mean()
    torch.testing.assert_close(terms["competition"], expected)
    base = terms["loss"] - terms["competition"]
    torch.testing.assert_close(base, 5.0 * terms["mask_bce"] + 5.0 * terms["mask_dice"])


def test_concept_queries_train_the_projector_only_through_the_query_regression(synth_root, tmp_path):
    cfg = _resolved(tiny_config(data={"root": str(synth_root)}))
    cfg["model"]["readout"] = {"name": "concept_teacher", "concepts": list(CLASS_CONCEPTS + RELATIONAL_CONCEPTS)}
    cfg["loss"]["concept_query_weight"] = 3.0
    task = SegEarthTask(cfg)
    teacher = task.model.readout
    out = task.model(torch.rand(2, 3, 64, 64), ["water?", "roads?"], concepts=["water", "road"])
    terms = task._loss(out, torch.zeros(2, 64, 64), point_sampled=False)
    torch.testing.assert_close(terms["concept_query"], out.terms["concept_query"])
    torch.testing.assert_close(terms["loss"] - 3.0 * terms["concept_query"], 5.0 * terms["mask_bce"] + 5.0 * terms["mask_dice"])
    terms["concept_query"].backward()  # the regression moves the projector, never its teacher
    assert teacher.queries.weight.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.projector.parameters())
    # a fit gives the concept queries their own optimiser group and checkpoints them
    cfg["trainer"]["limit_train_batches"] = 2
    task, trainer = fit_tiny(cfg, tmp_path)
    assert "readout" in {g["name"] for g in trainer.optimizers[0].param_groups}
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    assert "model.readout.queries.weight" in torch.load(tmp_path / "c.ckpt", weights_only=False)["state_dict"]


def test_concept_choice_test_rows_name_the_concept_that_answered(synth_root, tmp_path):
    from framework.eval.report import concept_table

    cfg = _resolved(tiny_config(data={"root": str(synth_root), "eval_batch_size": 3}))
    cfg["model"]["readout"] = {"name": "concept_choice", "concepts": list(CLASS_CONCEPTS + RELATIONAL_CONCEPTS)}
    L.seed_everything(cfg["seed"], verbose=False)
    task = SegEarthTask(cfg).eval()
    data = ReasoningDataModule(cfg["data"], seed=0)
    L.Trainer(default_root_dir=tmp_path, logger=False, **cfg["trainer"]).test(
        task, dataloaders=data.test_dataloader(), verbose=False
    )
    samples = task.results["test"]["samples"]
    dataset = data.dataset("test")
    with torch.no_grad():  # each row's routing is the model's for that question
        for row in samples[:3]:
            item = dataset[row["id"]]
            assert (item["id"], item["question"]) == (row["id"], row["question"])
            assert row["routed"] == task.model(item["image"][None], [item["question"]]).notes["routed"][0]
    header, _, *lines = concept_table(samples).strip().splitlines()
    assert header.endswith("| routed to it |")
    for line in lines:  # the last column: how many of the concept's questions were routed to it
        cells = [c.strip() for c in line.strip("|").split("|")]
        asked = [s for s in samples if s["concept"] == cells[0]]
        assert cells[-1] == f"{sum(s['routed'] == cells[0] for s in asked)}/{len(asked)}"
    assert len(lines) == len({s["concept"] for s in samples})


class CountRows(L.Callback):
    def on_fit_start(self, trainer, task):
        self.rows = count_rows(task.model)


def test_a_training_step_runs_the_image_only_slots_once_per_image(tmp_path):
    """4 images x 5 questions (``data.questions_per_image``): the encoder, the compressor and the head's pixel
    decoder see 4 rows in one call each, the LLM, the projector and the head's decoder 20."""
    root = tmp_path / "synth"
    write_synthetic_dataset(root, n=12, seed=0, image_size=64, samples_per_scene=5)
    # one phrasing per sample: an image's 5 samples are one visit, so a batch of 4 visits holds 4 images
    cfg = tiny_config(data={"root": str(root), "batch_size": 20, "questions_per_image": 5, "train_questions": "first"})
    cfg["model"].update(TINY_IMAGE_PATH)
    cfg["trainer"].update(limit_train_batches=1, limit_val_batches=0)
    counter = CountRows()
    fit_tiny(_resolved(cfg), tmp_path, [counter])
    assert counter.rows == {"encoder": [4], "compressor": [4], "pixel decoder": [4],
                            "llm": [20], "projector": [20], "transformer decoder": [20]}
