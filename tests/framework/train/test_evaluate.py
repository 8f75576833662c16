"""``segearth test`` on two CPU processes (DDP, gloo, started by torchrun) gives exactly the single-process
results: every sample of a split whose size does not divide by 2 is counted once (the distributed sampler pads by
repeating one), in both frames, with complete per-sample rows; only rank 0 writes, prints and logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import mlflow
import pytest
import torch

from framework.cli.main import main
from framework.core.config import load_config
from framework.data.datamodule import ReasoningDataModule
from framework.data.synth import write_synthetic_dataset
from framework.train.task import SegEarthTask
from tests.tiny import tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]
N_TEST = 5


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, Path]:
    """(config file, checkpoint): a random-init tiny model saved as a slim checkpoint, evaluated one sample per
    batch (so both runs compute each sample alike) with its threshold at a median logit (masks neither empty
    nor full), on 96 px scenes scored in a 64 px frame."""
    tmp = tmp_path_factory.mktemp("ddp")
    counts = write_synthetic_dataset(tmp / "data", n=6, seed=5, image_size=96, samples_per_scene=N_TEST)
    assert counts["test"] == N_TEST and N_TEST % 2
    cfg = tiny_config(data={"root": str(tmp / "data"), "eval_batch_size": 1}, output_dir=str(tmp / "runs"))
    cfg["tracking"] = {"experiment": "evaluate-ddp"}
    path = write_config(tmp / "tiny.yaml", cfg)
    resolved = load_config(path, validate_components=False)
    L.seed_everything(resolved["seed"], verbose=False)
    task = SegEarthTask(resolved).eval()
    item = ReasoningDataModule(resolved["data"]).dataset("test")[0]
    with torch.no_grad():
        cfg["eval"] = {"threshold": float(task.model(item["image"][None], [item["question"]]).mask_logits.median())}
    write_config(path, cfg)
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp / "model.ckpt")
    return path, tmp / "model.ckpt"


def test_two_processes_count_every_sample_once(experiment, tmp_path, mlflow_uri, capsys):
    config, ckpt = experiment
    args = ["test", str(config), "--ckpt", str(ckpt)]
    assert main([*args, "--out", str(tmp_path / "single"), "tracking.enabled=false"]) == 0
    capsys.readouterr()
    # torchrun starts both processes at once (Lightning's own ddp launcher would import everything twice in a
    # row); the same code path as a launch by Lightning, SLURM or torchrun once the processes exist
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    ddp = subprocess.run(
        [*torchrun, "-m", "framework.cli", *args, "--out", str(tmp_path / "ddp"), "trainer.devices=2",
         "trainer.strategy=ddp"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        # one thread per process, as in the single-process run: the same arithmetic, bit for bit
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        timeout=240,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("| model, true questions |") == 1  # rank 1 prints nothing

    single = json.loads((tmp_path / "single" / "results.json").read_text())
    both = json.loads((tmp_path / "ddp" / "results.json").read_text())
    for prefix in ("test", "test_shuffled"):
        metrics = both[prefix]["metrics"]
        assert metrics["n"] == metrics["native/n"] == N_TEST
        assert 0 < metrics["giou"] < 1 and 0 < metrics["native/giou"] < 1  # not a trivial prediction
        assert metrics == single[prefix]["metrics"]
        assert both[prefix]["samples"] == single[prefix]["samples"]
        assert [row["id"] for row in both[prefix]["samples"]] == list(range(N_TEST))

    overlays = sorted(p.name for p in (tmp_path / "ddp" / "overlays").iterdir())
    assert len(overlays) == N_TEST and overlays == sorted(p.name for p in (tmp_path / "single" / "overlays").iterdir())
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["evaluations", "overlays", "results.json",
                                                                    "results.md"]
    assert sorted(p.name for p in (tmp_path / "ddp" / "evaluations").iterdir()) == ["001-test-test", "index.jsonl"]
    assert not (tmp_path / "runs").exists() and not (config.parent / "runs").exists()

    client = mlflow.MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("evaluate-ddp").experiment_id])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"results.json", "results.md", "overlays"}
    assert len(client.list_artifacts(run.info.run_id, "overlays")) == N_TEST


def test_spawned_workers_are_refused(experiment, capsys):
    config, ckpt = experiment
    code = main(["test", str(config), "--ckpt", str(ckpt), "trainer.devices=2", "trainer.strategy=ddp_spawn"])
    assert code == 2
    assert "strategy=ddp" in capsys.readouterr().err
