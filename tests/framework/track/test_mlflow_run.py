"""MLflow tracking against real stores: a tiny ``fit`` + ``test`` through the CLI read back with ``MlflowClient``
(params, tags, metric histories without duplicate steps, system metrics, validation overlays, checkpoints, results),
two compressors as two rows of ``segearth runs``, an unreachable server (fail fast, or the offline fallback),
runs that end by SIGTERM or by a crash, and a real server that dies during a fit and comes back."""

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from framework.cli.main import main
from framework.core.config import load_config
from framework.core.errors import UserError
from framework.track.mlflow_run import LOCAL_STORE, SERVER_TIMEOUT_S, make_logger
from tests.tiny import tiny_config, write_config

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = "tracking-e2e"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(root), "--n", "8", "--seed", "1", "--image-size", "64"]) == 0
    return root


def _config(tmp: Path, synth_root: Path, name: str, compressor: str, tracking: dict) -> Path:
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp / "runs"), name=name)
    cfg["model"]["compressor"] = {"name": compressor, "ratio": 4}
    cfg["model"]["llm"]["template"] = "<image> Question: <question>[SEG] Answer:"  # visual tokens go in the prompt
    cfg["tracking"] = {"experiment": EXPERIMENT, **tracking}
    return write_config(tmp / f"{name}.yaml", cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, synth_root, mlflow_uri):
    """Two fits (avg_pool with everything recorded; pixel_shuffle bare) and a test of the first, via the CLI."""
    tmp = tmp_path_factory.mktemp("tracked")
    full = _config(tmp, synth_root, "pool", "avg_pool", {"val_overlays": 2, "log_checkpoints": True})
    bare = _config(tmp, synth_root, "shuffle", "pixel_shuffle", {"val_overlays": 0, "system_metrics": False})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's default 10 s outlasts a tiny fit
        # two epochs of two micro-batches accumulated into one step: Lightning's duplicate-step sources at work
        accumulate = ["trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.accumulate_grad_batches=2"]
        assert main(["fit", str(full), *accumulate]) == 0
        assert main(["test", str(full), "--ckpt", "best"]) == 0
        assert main(["fit", str(bare), "trainer.limit_train_batches=1"]) == 0
    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    return client, runs


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    return [a.path for a in client.list_artifacts(run_id, path)]


@pytest.mark.slow
def test_fit_run_records_params_tags_metrics_and_artifacts(recorded):
    client, runs = recorded
    run = runs["pool-fit"]
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model.encoder.name"] == "efficientnet_lite" and params["model.compressor.name"] == "avg_pool"
    assert params["model.compressor.ratio"] == "4" and params["trainer.accumulate_grad_batches"] == "2"
    assert not [k for k in params if k.startswith("config/")]  # no second copy from Lightning's hparams logging
    for tag in ("git.commit", "git.dirty", "version.torch", "version.lightning", "version.mlflow", "host", "device"):
        assert tags[tag], tag
    history = lambda key: client.get_metric_history(run.info.run_id, key)  # noqa: E731
    assert len(history("val/giou")) == 2 and len(history("train/loss_epoch")) == 2  # one per epoch
    assert len(history("lr-AdamW/mask_head")) == 2  # one per optimiser step
    assert {"train/loss_step", "val/loss", "val/native/giou"} <= set(metrics)
    # MLflow's system metrics: CPU utilisation and memory (GPU ones only where there is an NVIDIA GPU)
    assert history("system/cpu_utilization_percentage") and history("system/system_memory_usage_megabytes")

    assert {"config.yaml", "checkpoints", "images"} <= set(_artifacts(client, run.info.run_id))
    assert _artifacts(client, run.info.run_id, "checkpoints") == ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
    images = [p for p in _artifacts(client, run.info.run_id, "images") if p.endswith(".png")]
    keys_steps = {(p.split("/")[1].split("+")[0], int(p.split("+step+")[1].split("+")[0])) for p in images}
    val_steps = {m.step for m in history("val/giou")}
    assert len(images) == 4 and {s for _, s in keys_steps} == val_steps  # 2 samples x 2 validations
    assert all(k.startswith("val_overlay_") for k, _ in keys_steps)
    local = client.download_artifacts(run.info.run_id, images[0])
    with Image.open(local) as overlay:  # the image over a caption band, as framework.eval.overlays draws it
        assert overlay.width == 64 and overlay.height > 64


@pytest.mark.slow
def test_test_run_records_results(recorded):
    client, runs = recorded
    run = runs["pool-test"]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.compressor.name"] == "avg_pool"
    assert {"results.json", "results.md", "overlays"} <= set(_artifacts(client, run.info.run_id))
    results = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json")).read_text())
    assert run.data.metrics["test/giou"] == pytest.approx(results["test"]["metrics"]["giou"])
    assert "test_shuffled/giou" in run.data.metrics


@pytest.mark.slow
def test_no_duplicate_metric_steps_in_any_run(recorded):
    client, runs = recorded
    assert set(runs) == {"pool-fit", "pool-test", "shuffle-fit"}
    for name, run in runs.items():
        for key in run.data.metrics:
            steps = collections.Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert not [s for s, n in steps.items() if n > 1], (name, key, steps)


@pytest.mark.slow
def test_two_compressors_are_two_rows_of_segearth_runs(recorded, capsys, mlflow_uri):
    _, runs = recorded
    assert "system/cpu_utilization_percentage" not in runs["shuffle-fit"].data.metrics  # system_metrics: false
    assert not [p for p in recorded[0].list_artifacts(runs["shuffle-fit"].info.run_id) if p.path == "images"]
    capsys.readouterr()
    fits = "attributes.run_name LIKE '%-fit'"
    assert main(["runs", "--uri", mlflow_uri, "--experiment", EXPERIMENT, "--filter", fits, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert [(r["run"], r["encoder"], r["compressor"], r["model.compressor.ratio"]) for r in rows] == [
        ("pool-fit", "efficientnet_lite", "avg_pool", "4"),
        ("shuffle-fit", "efficientnet_lite", "pixel_shuffle", "4"),
    ]
    assert all(0 <= float(r["val/giou"]) <= 1 for r in rows)


def _silent_server(stop: threading.Event) -> int:
    """A TCP server that accepts connections and never answers (a hung tracking server); returns its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    held = []

    def serve() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass
        for conn in held:
            conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_unreachable_server_fails_fast_with_its_uri(tmp_path, synth_root, capsys):
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens: refused at once
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    cfg["tracking"] = {"uri": uri}
    path = write_config(tmp_path / "down.yaml", cfg)
    started = time.time()
    assert main(["fit", str(path)]) == 2
    assert time.time() - started < 10  # data indexing + the check; the model is not built
    err = capsys.readouterr().err
    assert f"tracking server {uri} unreachable" in err and "tracking.offline_fallback" in err

    stop = threading.Event()
    hung = f"http://127.0.0.1:{_silent_server(stop)}"  # accepts, never answers: the timeout path
    try:
        started = time.time()
        with pytest.raises(UserError, match=f"tracking server {hung} unreachable"):
            make_logger(load_config(path, [f"tracking.uri={hung}"], validate_components=False), tmp_path, "x")
        assert time.time() - started < SERVER_TIMEOUT_S + 2
    finally:
        stop.set()


def test_offline_fallback_logs_to_the_local_store(tmp_path, monkeypatch, capsys, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # MLflow exports the URI a logger uses: restore it after
    uri = f"http://127.0.0.1:{_free_port()}"
    cfg = tiny_config(output_dir=str(tmp_path / "runs"))
    cfg["tracking"] = {"uri": uri, "offline_fallback": True, "experiment": "offline"}
    cfg = load_config(write_config(tmp_path / "c.yaml", cfg), validate_components=False)
    logger = make_logger(cfg, tmp_path / "runs" / "x" / "1", "offline-fit")
    assert logger.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert f"tracking server {uri} unreachable" in capsys.readouterr().err
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    run = mlflow.MlflowClient(LOCAL_STORE).get_run(logger.run_id)  # the store `segearth runs` reads by default
    assert run.data.tags["tracking.offline_fallback_from"] == uri and run.info.status == "FINISHED"
    mlflow.set_tracking_uri(mlflow_uri)


def _fit_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return runs[0] if runs else None


@pytest.mark.slow
def test_sigterm_mid_training_marks_the_run_killed(tmp_path, synth_root, mlflow_uri):
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp_path / "runs"))
    cfg["trainer"]["max_epochs"] = 10_000  # runs until killed
    cfg["tracking"] = {"experiment": "killed", "val_overlays": 0}
    path = write_config(tmp_path / "long.yaml", cfg)
    log = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while the child runs
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "framework.cli", "fit", str(path)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    client = mlflow.MlflowClient(mlflow_uri)
    run = None
    try:
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            run = _fit_run(client, "killed")
            if run is not None and "train/loss_step" in run.data.metrics:  # training is under way
                break
            time.sleep(0.5)
        assert process.poll() is None and run is not None, log.read_text()
        assert run.info.status == "RUNNING"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert process.returncode == 143 and "terminated (SIGTERM)" in log.read_text()  # not success for a scheduler


@pytest.mark.slow
def test_crash_mid_training_marks_the_run_failed(tmp_path, synth_root, mlflow_uri, capsys):
    """Training images that index fine but fail to decode: a DataError at the first batch, inside ``trainer.fit``."""
    root = tmp_path / "broken"
    assert main(["data", "synth", "--out", str(root), "--n", "4", "--seed", "2", "--image-size", "64"]) == 0
    for image in (root / "train" / "images").iterdir():
        image.write_bytes(image.read_bytes()[:64])
    cfg = tiny_config(data={"root": str(root)}, output_dir=str(tmp_path / "runs"))
    cfg["tracking"] = {"experiment": "crashed", "val_overlays": 0, "system_metrics": False}
    assert main(["fit", str(write_config(tmp_path / "broken.yaml", cfg))]) == 2
    assert "segearth: error:" in capsys.readouterr().err
    run = _fit_run(mlflow.MlflowClient(mlflow_uri), "crashed")
    assert run.info.status == "FAILED"


def _mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:``port`` over the sqlite store in ``folder``, in a process group of
    its own (its uvicorn worker would outlive a killed parent); returns once it answers ``/health``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job runners: nothing here uses them
    with (folder / "server.log").open("a") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store.db'}"],
            cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return server
        except OSError:
            assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.3)
    raise AssertionError("mlflow server did not start: " + (folder / "server.log").read_text()[-2000:])


def _stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _wait_for(condition, what: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None and time.time() < deadline, f"{what}: {log.read_text()[-3000:]}"
        time.sleep(0.3)


def _fit_against(tmp: Path, synth_root: Path, uri: str, epochs: int, batches: int, tracking: dict):
    """A tiny ``segearth fit`` (a process, output to ``tmp/fit.log``) logging to ``uri``; returns (process, log)."""
    cfg = tiny_config(data={"root": str(synth_root)}, output_dir=str(tmp / "runs"), name="outage")
    cfg["trainer"].update(max_epochs=epochs, limit_train_batches=batches)
    cfg["tracking"] = {"uri": uri, "experiment": "outage", "val_overlays": 1, "log_checkpoints": True, **tracking}
    path = write_config(tmp / "outage.yaml", cfg)
    log = tmp / "fit.log"
    with log.open("w") as out:
        fit = subprocess.Popen(
            [sys.executable, "-m", "framework.cli", "fit", str(path)], cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5"},
        )
    return fit, log


@pytest.mark.slow
def test_tracking_server_that_dies_mid_fit_and_returns_loses_nothing(tmp_path, synth_root):
    """A real server killed (SIGKILL, whole process group) while a fit trains, restarted on the same store: the fit
    trains on, and the run ends FINISHED with every step of its histories once, every validation's overlays and
    its checkpoints."""
    port, epochs, batches = _free_port(), 45, 3
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    fit, log = _fit_against(tmp_path, synth_root, uri, epochs, batches, {"retry_s": 1})
    client = mlflow.MlflowClient(uri)
    try:
        run = lambda: _fit_run(client, "outage")  # noqa: E731
        _wait_for(lambda: run() is not None and "train/loss_step" in run().data.metrics, "training starts", fit, log)
        run_id = run().info.run_id
        _stop(server)
        _wait_for(lambda: "not answering" in log.read_text(), "the fit notices the outage", fit, log)
        time.sleep(3)  # training goes on without the server
        server = _mlflow_server(tmp_path, port)
        restarted = time.time() * 1000
        assert fit.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if fit.poll() is None:
            fit.kill()
        _stop(server)
        server = _mlflow_server(tmp_path, port)  # to read the run back
    try:
        text = log.read_text()
        assert "answers again after" in text and "still not answering" not in text, text[-3000:]
        finished = client.get_run(run_id)
        assert finished.info.status == "FINISHED"
        history = lambda key: [m.step for m in client.get_metric_history(run_id, key)]  # noqa: E731
        assert sorted(history("train/loss_step")) == list(range(epochs * batches))  # every step once, no gap
        assert len(history("train/loss_epoch")) == len(set(history("val/giou"))) == epochs
        val_steps = set(history("val/giou"))
        images = [p for p in _artifacts(client, run_id, "images") if p.endswith(".png")]
        assert {int(p.split("+step+")[1].split("+")[0]) for p in images} == val_steps  # one overlay per validation
        assert _artifacts(client, run_id, "checkpoints") == ["checkpoints/best.ckpt", "checkpoints/last.ckpt"]
        cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        steps = [m.step for m in cpu]
        assert len(steps) == len(set(steps)) and max(m.timestamp for m in cpu) > restarted  # resumed, no repeat
        run_dir = next((tmp_path / "runs" / "outage").iterdir())
        assert (run_dir / "fit.json").is_file() and not (run_dir / "mlflow_unsent.jsonl").exists()
    finally:
        _stop(server)


@pytest.mark.slow
def test_tracking_server_that_never_returns_leaves_its_metrics_in_the_run_folder(tmp_path, synth_root):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    fit, log = _fit_against(tmp_path, synth_root, uri, 2, 3, {"retry_s": 1, "final_wait_s": 2,
                                                               "system_metrics": False})
    client = mlflow.MlflowClient(uri)
    try:
        _wait_for(lambda: (r := _fit_run(client, "outage")) is not None and "train/loss_step" in r.data.metrics,
                  "training starts", fit, log)
        _stop(server)
        assert fit.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if fit.poll() is None:
            fit.kill()
        _stop(server)
    run_dir = next((tmp_path / "runs" / "outage").iterdir())
    rows = [json.loads(line) for line in (run_dir / "mlflow_unsent.jsonl").read_text().splitlines()]
    assert {"train/loss_step", "val/giou"} <= {r["key"] for r in rows}
    assert f"{len(rows)} metric values kept in {run_dir / 'mlflow_unsent.jsonl'}" in log.read_text()
    assert (run_dir / "fit.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
