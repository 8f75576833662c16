"""`segearth sweep`: the sweep YAML's checks, conditional sampling, and tiny real sweeps on real storages (sqlite with
two workers, a worker killed mid-trial, PostgreSQL from two processes); trials are real `segearth fit` processes."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest
import yaml

from framework.cli.main import main
from framework.core.errors import ConfigError
from framework.core.model import check_model_config
from framework.sweep.spec import apply_params, load_sweep
from tests.tiny import tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]
POSTGRES_URL = os.environ.get("SEGEARTH_TEST_POSTGRES_URL")

TINY_SPACE = {
    "model.compressor.name": {
        "type": "component",
        "choices": {
            "avg_pool": {},
            "pixel_shuffle": {},
            "perceiver": {"dim": 16, "depth": 1, "heads": 2, "dim_head": 8, "ff_mult": 1},
        },
    },
    "model.compressor.ratio": {"type": "categorical", "choices": [4, 16], "when": {"model.compressor.name": ["avg_pool", "pixel_shuffle"]}},
    "model.compressor.num_tokens": {"type": "int", "low": 1, "high": 8, "log": True, "when": {"model.compressor.name": "perceiver"}},
    "model.projector.name": {"type": "component", "choices": {"mlp": {"hidden": 16}, "cross_attention": {"dim": 16, "heads": 2, "dim_head": 8}}},
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}
REFERENCE = {"model.compressor.name": "avg_pool", "model.compressor.ratio": 4, "model.projector.name": "cross_attention", "optim.lr": 1e-3}


def tiny_sweep(tmp_path: Path, synth_root: Path, **sections) -> Path:
    """A sweep over tiny configs (2 epochs x 2 steps): three compressors, two projectors, a log-scale lr."""
    base = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    base["tracking"] = {"experiment": f"sweep-{uuid.uuid4().hex[:8]}", "system_metrics": False, "val_overlays": 0}
    write_config(tmp_path / "tiny.yaml", base)
    sweep = {
        "study": f"tiny-{uuid.uuid4().hex[:8]}",
        "experiment": "tiny.yaml",
        "overrides": {
            "model.llm.template": "<image> Q:<question>[SEG] A:",
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 2,
            "trainer.limit_val_batches": 1,
        },
        "objective": {"metric": "val/giou", "direction": "maximize"},
        "budget": {"n_trials": 6},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 3},
        "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        "faults": {"heartbeat_s": 1, "grace_s": 3},
        "space": TINY_SPACE,
        "enqueue": [REFERENCE],
        "report": {"slice": ["model.compressor.ratio", "model.projector.name"]},
    }
    for key, value in sections.items():  # sections replace the default's, the space is updated entry by entry
        sweep[key] = {**sweep[key], **value} if key == "space" else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def sweep_command(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "framework.cli", "sweep", str(path), *args]


def run(command: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=sweep_env(), timeout=timeout)


def sweep_env() -> dict[str, str]:
    # one thread per trial: two workers share two cores
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def load(path: Path, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=yaml.safe_load(path.read_text())["study"], storage=storage)


def check_conditional(trial: optuna.trial.FrozenTrial) -> None:
    """Conditional params exist exactly where their condition holds."""
    pooled = trial.params["model.compressor.name"] in ("avg_pool", "pixel_shuffle")
    assert ("model.compressor.ratio" in trial.params) == pooled
    assert ("model.compressor.num_tokens" in trial.params) == (not pooled)


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spaces": {}}, "unknown key(s) spaces"),
        ({"objective": {"metric": "giou"}}, "objective.metric"),
        ({"budget": {"n_trials": 0}}, "budget.n_trials: must be > 0"),
        ({"pruner": {"name": "median", "warmup": 1}}, "pruner (median)"),
        ({"sampler": {"name": "grid"}}, "sampler.name"),
        ({"space": {"optim.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}}, "log scale needs low > 0"),
        ({"space": {"optim.lr": {"type": "float", "low": 1.0, "high": 0.1}}}, "low (1.0) must be < high"),
        ({"space": {"optim.lr": {"type": "uniform", "low": 0.1, "high": 1}}}, "space.optim.lr.type"),
        ({"space": {"optim.name": {"type": "component", "choices": {"adam": {}}}}}, "keyed model.<slot>.name"),
        ({"space": {"model.compressor.ratio": {"type": "categorical", "choices": [4], "when": {"model.compressor.name": "avg_pool"}}}},
         "not an earlier parameter"),
        ({"space": {"model.projector.name": {"type": "component", "choices": {"mlp": {"hiden": 16}}}}},
         "space.model.projector.name choice 'mlp'"),
        ({"space": {"model.projector.name": {"type": "component", "choices": {"mlpp": {}}}}}, "mlpp"),
        ({"enqueue": [{**REFERENCE, "optim.lr": 1.0}]}, "optim.lr=1.0 is outside its search space"),
        ({"enqueue": [{**REFERENCE, "model.compressor.num_tokens": 4}]}, "model.compressor.num_tokens does not apply"),
        ({"report": {"slice": ["model.compressor.level"]}}, "report.slice"),
        ({"experiment": "missing.yaml"}, "not found"),
    ],
)
def test_sweep_yaml_errors(tmp_path, synth_root, change, message):
    path = tiny_sweep(tmp_path, synth_root)
    data = yaml.safe_load(path.read_text())
    data.update(change)
    if "space" in change:
        data["enqueue"], data["report"] = [], {}  # they name parameters of the full space
    bad = write(tmp_path, "bad.yaml", data)
    with pytest.raises(ConfigError) as error:
        load_sweep(bad)
    assert message in str(error.value)


def test_sweep_cli_error_is_one_line(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", {"experiment": "nowhere.yaml", "budget": {"n_trials": 1}, "space": {}})
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segearth: error:") and "\n" not in err and "nowhere.yaml" in err


@pytest.mark.parametrize("storage", ["postgresql+psycopg2://nobody:secret@127.0.0.1:1/x", "sqlite:///:memory:"])
def test_unusable_storage_is_one_line(tmp_path, synth_root, capsys, storage):
    path = tiny_sweep(tmp_path, synth_root)
    assert main(["sweep", str(path), "--storage", storage]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segearth: error: --storage") and "\n" not in err and "secret" not in err


def test_compression_projection_enqueues_the_grid_and_the_reference_twice():
    """The shipped sweep: every (compression, projector) pair of the grid once, the mini's design with two seeds
    first, the ratio only with conv_stride, and every trial config passes the component signature checks with
    nothing of another choice left over, visual tokens in the prompt."""
    spec = load_sweep(REPO / "experiments" / "sweeps" / "compression_projection.yaml")
    assert spec.n_trials == len(spec.enqueue)  # the sampler never draws: the report is the whole grid
    reference = {"model.compressor.name": "conv_stride", "model.compressor.ratio": 4,
                 "model.projector.name": "cross_attention"}
    assert [p["seed"] for p in spec.enqueue[:2]] == [0, 1]
    assert all({k: p[k] for k in reference} == reference for p in spec.enqueue[:2])
    pairs = [(p["model.compressor.name"], p.get("model.compressor.ratio"), p["model.projector.name"])
             for p in spec.enqueue[1:]]
    assert sorted(pairs, key=repr) == sorted(
        [(c, r, proj) for c, r in [("conv_stride", 4), ("conv_stride", 16), ("conv_stride", 64), ("none", None)]
         for proj in ("cross_attention", "multiscale_cross_attention", "mlp")], key=repr)
    for params in spec.enqueue:
        cfg = apply_params(spec.base, spec.space, params)
        check_model_config(cfg["model"])
        compressor = params["model.compressor.name"]
        expected = {"name": compressor, **spec.param("model.compressor.name").fixed[compressor]}
        if "model.compressor.ratio" in params:
            expected["ratio"] = params["model.compressor.ratio"]
        assert cfg["model"]["compressor"] == expected and cfg["seed"] == params["seed"]
        assert cfg["model"]["projector"]["name"] == params["model.projector.name"]
        assert "<image>" in cfg["model"]["llm"]["template"] and cfg["model"]["llm"]["lora"]


@pytest.mark.slow
def test_two_workers_on_sqlite(tmp_path, synth_root, mlflow_uri):
    path = tiny_sweep(tmp_path, synth_root)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    done = run(sweep_command(path, "--workers", "2", "--storage", storage), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]

    study = load(path, storage)
    trials = study.get_trials()
    assert len(trials) == 6 and sorted(t.number for t in trials) == list(range(6))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials), [(t.number, t.state, t.user_attrs.get("error")) for t in trials]
    assert trials[0].params == REFERENCE  # the enqueued reference trial runs first
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers ran trials
    for t in trials:
        check_conditional(t)
        cfg = yaml.safe_load(t.user_attrs["config"])
        assert cfg["model"]["compressor"]["name"] == t.params["model.compressor.name"]
        assert ("ratio" in cfg["model"]["compressor"]) == ("model.compressor.ratio" in t.params)

    sweep_dir = tmp_path / "runs" / "sweeps" / study.study_name
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["optim"]["lr"] == pytest.approx(study.best_trial.params["optim.lr"])
    report = sweep_dir / "report"
    for name in ("history", "parallel_coordinate", "slice", "importances"):
        assert (report / f"{name}.html").stat().st_size > 1000 and (report / f"{name}.png").stat().st_size > 1000
    table = (report / "trials.md").read_text()
    for t in trials:
        assert f"\n| {t.number} | {t.state.name} |" in table
    assert "### model.compressor.ratio" in table and "### model.projector.name" in table

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(yaml.safe_load((tmp_path / "tiny.yaml").read_text())["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("optuna.study") == study.study_name and "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(6))
    for child in children:
        trial = trials[int(child.data.tags["optuna.trial"])]
        assert child.data.tags["optuna.state"] == trial.state.name
        assert child.data.tags["optuna.param.model.projector.name"] == trial.params["model.projector.name"]
        assert ("optuna.param.model.compressor.ratio" in child.data.tags) == ("model.compressor.ratio" in trial.params)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/trials.md", "report/slice.png", "report/slice.html"} <= artifacts
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def _fit_child(process: psutil.Process) -> psutil.Process | None:
    for child in process.children(recursive=True):
        try:
            if "fit" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            pass
    return None


@pytest.mark.slow
def test_killed_worker_trial_is_retried_and_failures_are_recorded(tmp_path, synth_root, mlflow_uri):
    """SIGKILL the only controller mid-trial, re-run the command: the stale trial is failed and retried with the
    same params; an enqueued trial that raises in training is FAILED with its error and the sweep goes on; every
    trial is pruned (threshold above any gIoU) and ends PRUNED, not FAILED."""
    failing = {"model.compressor.name": "perceiver", "model.compressor.num_tokens": 1024, "model.projector.name": "mlp", "optim.lr": 1e-3}
    path = tiny_sweep(
        tmp_path,
        synth_root,
        budget={"n_trials": 2},
        overrides={"model.llm.template": "<image> Q:<question>[SEG] A:", "trainer.max_epochs": 3,
                   "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1},
        pruner={"name": "threshold", "lower": 2.0, "n_warmup_steps": 1},
        # a perceiver with 1024 visual tokens overflows the tiny LLM's 512 positions: a DataError in training
        space={"model.compressor.num_tokens": {**TINY_SPACE["model.compressor.num_tokens"], "high": 1024}},
        enqueue=[REFERENCE, failing],
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    output = tmp_path / "worker.log"
    with open(output, "w") as sink:
        worker = psutil.Popen(sweep_command(path, "--storage", storage), cwd=tmp_path, env=sweep_env(),
                              stdout=sink, stderr=subprocess.STDOUT)
    client = mlflow.MlflowClient(mlflow_uri)
    experiment_name = yaml.safe_load((tmp_path / "tiny.yaml").read_text())["tracking"]["experiment"]

    def training() -> bool:
        # The first trial's job has logged its config to its MLflow run, the last thing before Trainer.fit. Read
        # from the artifact folder, not the store: the fit takes under a second on idle cores, less than a query
        # of the shared sqlite store may take, and the job must be caught before it ends.
        return any((tmp_path / "runs").rglob("mlartifacts/*/artifacts/config.yaml"))

    deadline = time.time() + 900
    while not training():
        assert time.time() < deadline and worker.poll() is None, output.read_text()[-3000:]
        time.sleep(0.01)
    job = _fit_child(worker)
    if job is not None:
        job.suspend()  # frozen mid-trial until its controller's death kills it
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    if job is not None:
        job.wait(timeout=60)  # dies with its controller (PR_SET_PDEATHSIG), leaving no orphan training

    resumed = run(sweep_command(path, "--storage", storage), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:] + resumed.stdout[-3000:]
    trials = load(path, storage).get_trials()
    states = {t.number: t.state.name for t in trials}
    assert states == {0: "FAIL", 1: "FAIL", 2: "PRUNED", 3: "PRUNED"}, states
    assert trials[0].user_attrs.get("error") is None  # killed: failed by its stale heartbeat, then retried
    retry = trials[2]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == trials[0].params == REFERENCE
    assert "max_position_embeddings" in trials[1].user_attrs["error"]
    assert trials[1].user_attrs["exit_code"] == 2
    for t in trials[2:]:
        assert t.user_attrs["pruned_at_epoch"] == 1 and set(t.intermediate_values) == {0, 1}
    table = (tmp_path / "runs" / "sweeps" / load(path, storage).study_name / "report" / "trials.md").read_text()
    assert "retry of trial 0" in table and "max_position_embeddings" in table

    experiment = client.get_experiment_by_name(experiment_name)
    children = {int(r.data.tags["optuna.trial"]): r for r in client.search_runs([experiment.experiment_id])
                if "optuna.trial" in r.data.tags}
    assert children[0].info.status == "KILLED" and children[0].data.tags["optuna.state"] == "FAIL"
    assert children[2].info.status == "FINISHED" and children[2].data.tags["optuna.state"] == "PRUNED"
    assert children[2].data.tags["optuna.retry_of"] == "0"


@pytest.mark.slow
@pytest.mark.skipif(POSTGRES_URL is None, reason="SEGEARTH_TEST_POSTGRES_URL is unset (.ci/run starts a PostgreSQL server and sets it)")
def test_two_processes_on_postgresql(tmp_path, synth_root):
    """Two independent `segearth sweep` processes (as on two machines) share one study through PostgreSQL."""
    path = tiny_sweep(tmp_path, synth_root, budget={"n_trials": 4},
                      overrides={"model.llm.template": "<image> Q:<question>[SEG] A:", "trainer.max_epochs": 2,
                                 "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1,
                                 "tracking.enabled": False})
    processes = [
        subprocess.Popen(sweep_command(path, "--storage", POSTGRES_URL, "--no-report"), cwd=tmp_path, env=sweep_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=1800)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    study = load(path, POSTGRES_URL)
    try:
        trials = study.get_trials()
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
        assert len({t.user_attrs["worker"] for t in trials}) == 2
        for t in trials:
            check_conditional(t)
        report = run(sweep_command(path, "--storage", POSTGRES_URL, "--report"), tmp_path)
        assert report.returncode == 0, report.stderr[-3000:]
        assert "4 trials — " in report.stdout and "budget 4 complete or pruned" in report.stdout
        assert (tmp_path / "runs" / "sweeps" / study.study_name / "report" / "trials.md").exists()
    finally:
        optuna.delete_study(study_name=study.study_name, storage=POSTGRES_URL)
