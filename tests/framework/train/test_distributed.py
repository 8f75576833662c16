"""DDP training on CPU (gloo, two processes started by torchrun) matches one process with the same global batch:
the same samples in each optimiser step, each sample once per epoch, the same weights after every step within float
tolerance and the same validation metrics; one run folder, and only rank 0 prints and logs to MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from framework.cli.main import main
from framework.data.sampling import EpochSampler
from framework.data.synth import write_synthetic_dataset
from tests.tiny import tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]
GLOBAL_BATCH = 4


@pytest.mark.parametrize("n", [8, 11])
def test_global_batches_do_not_depend_on_the_process_count(n):
    dataset = list(range(n))
    one = list(EpochSampler(dataset, 1, 0, seed=3))
    for world in (2, 4):
        per_rank = []
        for rank in range(world):
            sampler = EpochSampler(dataset, world, rank, seed=3)
            per_rank.append(list(sampler))
            assert len(per_rank[-1]) == len(sampler) == n // world
        seen = [i for part in per_rank for i in part]
        assert len(seen) == len(set(seen)) == n - n % world  # each sample at most once; only the remainder is left
        b = GLOBAL_BATCH // world
        for step in range(len(per_rank[0]) // b):
            global_batch = {i for part in per_rank for i in part[step * b : (step + 1) * b]}
            assert global_batch == set(one[step * GLOBAL_BATCH : (step + 1) * GLOBAL_BATCH])
    sampler = EpochSampler(dataset, 1, 0, seed=3)
    sampler.set_epoch(1)
    assert list(sampler) != one and sorted(sampler) == sorted(one)  # a new order each epoch


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """Two epochs of two global batches of 4; a Swin encoder (LayerNorm: batch statistics would differ between a
    batch of 4 and two of 2) without DropPath (its draws differ per process)."""
    tmp = tmp_path_factory.mktemp("fit-ddp")
    write_synthetic_dataset(tmp / "data", n=12, seed=4, image_size=64, samples_per_scene=1)
    cfg = tiny_config(data={"root": str(tmp / "data"), "train_questions": "first", "batch_size": GLOBAL_BATCH})
    cfg["model"]["encoder"] = {"name": "swin", "variant": "nano", "drop_path_rate": 0.0}
    cfg["trainer"].update(max_epochs=2, limit_train_batches=None, limit_val_batches=None, deterministic=True)
    return write_config(tmp / "tiny.yaml", cfg)


@pytest.mark.slow
def test_two_processes_train_like_one(config, tmp_path, mlflow_uri, capsys):
    single_out, ddp_out = tmp_path / "single", tmp_path / "ddp"
    assert main(["fit", str(config), f"output_dir={single_out}", "tracking.experiment=fit-one"]) == 0
    capsys.readouterr()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ddp = subprocess.run(
        [*torchrun, "-m", "framework.cli", "fit", str(config), f"output_dir={ddp_out}", "tracking.experiment=fit-two",
         "trainer.devices=2", "trainer.strategy=ddp", f"data.batch_size={GLOBAL_BATCH // 2}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("run folder:") == 1  # rank 1 prints nothing

    (single_run,) = (single_out / "tiny").iterdir()
    ddp_runs = [p for p in (ddp_out / "tiny").iterdir() if not p.name.startswith(".")]
    assert len(ddp_runs) == 1  # both processes wrote into rank 0's run folder
    ddp_run = ddp_runs[0]
    # rank 0's files only: the MLflow run record is the one run both processes' metrics went to
    assert sorted(p.name for p in ddp_run.iterdir()) == ["checkpoints", "config.yaml", "fit.json", "mlflow_run.json"]

    one = torch.load(single_run / "checkpoints" / "last.ckpt", weights_only=False)
    two = torch.load(ddp_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert one["global_step"] == two["global_step"] == 4
    # gradients summed across processes differ from one process's in the last bits; Adam divides each step by the
    # root of the gradient's second moment, which scales those bits up for an element whose gradient is nearly zero
    # (measured: a handful of the 1.5 M encoder weights 1-2e-5 apart): atol is a tenth of one step's size (lr 1e-3)
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, rtol=1e-4, atol=1e-4, msg=key)
    val_one = json.loads((single_run / "fit.json").read_text())["val"]
    val_two = json.loads((ddp_run / "fit.json").read_text())["val"]
    assert val_one["n"] == val_two["n"] > 0
    assert val_two == pytest.approx(val_one, nan_ok=True)

    client = mlflow.MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fit-two").experiment_id])
    assert run.data.params["trainer.strategy"] == "ddp"
    assert "train/loss_step" in run.data.metrics
