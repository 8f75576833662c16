"""Exact resume: a ``segearth fit`` killed with SIGKILL mid-epoch and continued with ``--resume last`` ends with the
same weights and validation metrics as an uninterrupted run (deterministic CPU run with random draws in the data
augmentation and the loss's point sampling, a frozen slot left out of the checkpoints, and a weight average); a
checkpoint write killed part-way never leaves a corrupt ``last.ckpt``."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from framework.cli.main import main
from framework.core.config import load_config
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import write_synthetic_dataset
from framework.train.checkpointing import AtomicCheckpointIO
from tests.tiny import tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # one thread, as the in-process run
EPOCHS, STEPS_PER_EPOCH = 2, 4


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("resume")
    write_synthetic_dataset(tmp / "data", n=12, seed=1, image_size=64, samples_per_scene=1)
    augment = {"hflip": 0.5, "rot90": 0.5, "color": 0.5}
    cfg = tiny_config(data={"root": str(tmp / "data"), "augment": augment, "train_questions": "first"})
    # slim checkpoints: the frozen encoder is rebuilt, not stored. (Not the LLM: a frozen text-only LLM memoises its
    # output per question, computed in whichever padded batch asked first, so a resumed run can differ in the last bit)
    cfg["model"]["encoder"]["frozen"] = True
    cfg["loss"] = {"point_sample": True, "num_points": 256}  # random points every step
    cfg["trainer"].update(max_epochs=EPOCHS, limit_train_batches=None, deterministic=True)
    cfg["checkpoint"] = {"every_n_steps": 1}
    cfg["optim"]["ema_decay"] = 0.9  # the weight average resumes too: state_dict holds it, the training weights beside
    cfg["tracking"] = {"enabled": False}
    path = write_config(tmp / "tiny.yaml", cfg)
    assert len(ReasoningDataModule(load_config(path)["data"]).train_dataloader()) == STEPS_PER_EPOCH
    return path


def final_state(run_dir: Path) -> tuple[dict, dict]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt, json.loads((run_dir / "fit.json").read_text())["val"]


def only_run(root: Path) -> Path:
    (run_dir,) = [p for p in (root / "tiny").iterdir() if not p.name.startswith(".")]
    return run_dir


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(config, tmp_path):
    assert main(["fit", str(config), f"output_dir={tmp_path / 'straight'}"]) == 0
    straight, straight_val = final_state(only_run(tmp_path / "straight"))
    assert straight["global_step"] == EPOCHS * STEPS_PER_EPOCH

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "framework.cli", "fit", str(config), f"output_dir={killed}"]
    process = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list(killed.glob("tiny/*/checkpoints/last.ckpt")):  # the first step checkpoint: kill at once
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    run_dir = only_run(killed)
    interrupted = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 0 < interrupted["global_step"] < STEPS_PER_EPOCH  # killed mid-epoch, in the first epoch
    assert not (run_dir / "fit.json").exists()

    resumed = subprocess.run([*cmd, "--resume", "last"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(killed) == run_dir  # continued in the same run folder
    final, final_val = final_state(run_dir)
    assert json.loads((run_dir / "fit.json").read_text())["resumed_from"].endswith("last.ckpt")
    assert final["global_step"] == straight["global_step"]
    assert not any(k.startswith("model.encoder.") for k in final["state_dict"])
    assert final["state_dict"].keys() == straight["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    assert final["ema_training_weights"].keys() == straight["ema_training_weights"].keys()
    for key, value in straight["ema_training_weights"].items():
        assert torch.equal(final["ema_training_weights"][key], value), key
    assert final_val == straight_val
    # the optimiser state continued too (its moments would differ after a fresh start mid-run)
    for a, b in zip(final["optimizer_states"][0]["state"].values(), straight["optimizer_states"][0]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def _kill_after_first_checkpoint(cmd: list[str], root: Path, cwd: Path) -> None:
    process = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list(root.glob("tiny/*/checkpoints/last.ckpt")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(1.0)  # a few more steps logged after the checkpoint: the resumed fit redoes them
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()


@pytest.mark.slow
def test_a_resumed_fit_continues_its_mlflow_run_without_gap_or_duplicate_step(config, tmp_path, mlflow_uri):
    import mlflow

    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "framework.cli", "fit", str(config), f"output_dir={root}", "tracking.enabled=true",
           "tracking.experiment=resume-continues-run", "trainer.log_every_n_steps=1"]
    _kill_after_first_checkpoint(cmd, root, tmp_path)
    run_dir = only_run(root)
    first_run = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    resumed = subprocess.run([*cmd, "--resume", "last"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("resume-continues-run").experiment_id])
    assert [r.info.run_id for r in runs] == [first_run]  # one run: the resumed fit logged into the first
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(first_run, "train/loss_step")]
    assert sorted(steps) == list(range(EPOCHS * STEPS_PER_EPOCH)), steps  # every step once: no gap, no duplicate
    validated = [m.step for m in client.get_metric_history(first_run, "val/giou")]
    assert len(validated) == len(set(validated)) == EPOCHS


WRITER = textwrap.dedent(
    """
    import sys, torch
    from framework.train.checkpointing import AtomicCheckpointIO
    io, n = AtomicCheckpointIO(), 0
    while True:  # 16 MB per save: the kill below waits for a save in progress
        n += 1
        io.save_checkpoint({"n": n, "weights": torch.full((4, 1024, 1024), float(n))}, sys.argv[1])
        print(n, flush=True)
    """
)


def test_kill_during_save_leaves_a_complete_checkpoint(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target)], env=ENV, stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    assert process.stdout.readline().strip() == "1"  # one complete save exists
    deadline = time.time() + 60
    while not list(target.parent.glob("last.ckpt.tmp-*")):  # a later save is being written
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    checkpoint = torch.load(target, weights_only=True)
    assert checkpoint["n"] >= 1 and torch.equal(checkpoint["weights"], torch.full((4, 1024, 1024), float(checkpoint["n"])))
    # the next save replaces it and clears the temporary file the killed writer left
    AtomicCheckpointIO().save_checkpoint({"n": 0}, target)
    assert torch.load(target, weights_only=True) == {"n": 0}
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import torch
    from framework.core.errors import UserError
    from framework.train.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(1000.0)}, sys.argv[1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        io.save_checkpoint({"w": torch.zeros(1 << 20)}, sys.argv[1])
    except UserError as error:
        print(error)
    """
)


def test_a_checkpoint_write_that_runs_out_of_space_keeps_the_previous_one(tmp_path):
    """A save that cannot be written (a file-size limit stands in for a full disk) is a UserError naming the file
    and the cause; the previous checkpoint is untouched and loads, and no temporary file is left."""
    path = tmp_path / "last.ckpt"
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == (f"{path}: cannot write the checkpoint (File too large; disk full?); the previous "
                                   "last.ckpt is unchanged")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(1000.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_fit_on_a_full_disk_is_one_line_and_exit_2(config, tmp_path):
    import resource

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))  # below one checkpoint of the tiny model

    cmd = [sys.executable, "-m", "framework.cli", "fit", str(config), f"output_dir={tmp_path / 'runs'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240,
                          preexec_fn=limit_file_size)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("segearth: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.search(r"last\.ckpt: cannot write the checkpoint \(File too large; disk full\?\); no last\.ckpt was "
                     r"written$", errors[0]), errors[0]
    assert not list((tmp_path / "runs").rglob("*.ckpt*"))
