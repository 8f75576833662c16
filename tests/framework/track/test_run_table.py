"""`segearth runs` and `segearth ui` against a real sqlite MLflow store and a real MLflow server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from framework.core.errors import UserError
from framework.track.run_table import render, runs_table

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def two_runs(mlflow_uri):
    client = mlflow.MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("dash") or client.get_experiment(client.create_experiment("dash"))
    for name, compressor, giou in (("a-fit", "conv_stride", 0.5), ("b-fit", "perceiver", 0.6)):
        run = client.create_run(exp.experiment_id, run_name=name, tags={"sweep": "s1"})
        client.log_param(run.info.run_id, "model.encoder.name", "swin")
        client.log_param(run.info.run_id, "model.compressor.name", compressor)
        client.log_param(run.info.run_id, "model.compressor.ratio", "16")
        client.log_metric(run.info.run_id, "val/giou", giou)
        client.set_terminated(run.info.run_id)
    return mlflow_uri


def test_one_row_per_run_with_component_names(two_runs):
    rows = runs_table(two_runs, ["dash"])
    assert [(r["run"], r["compressor"], r["val/giou"]) for r in rows] == [
        ("a-fit", "conv_stride", 0.5),
        ("b-fit", "perceiver", 0.6),
    ]
    assert rows[0]["encoder"] == "swin" and rows[0]["model.compressor.ratio"] == "16"
    assert [r["run"] for r in runs_table(two_runs, ["dash"], "params.`model.compressor.name` = 'perceiver'")] == [
        "b-fit"
    ]
    assert len(runs_table(two_runs, ["dash"], "tags.sweep = 's1'")) == 2


def test_render_formats(two_runs):
    rows = runs_table(two_runs, ["dash"])
    assert render(rows, "csv").splitlines()[0].startswith("experiment,run,status,encoder")
    md = render(rows, "markdown").splitlines()
    assert md[0].startswith("| experiment | run |") and len(md) == 4
    assert "perceiver" in render(rows, "table")


def test_unknown_experiment_is_a_user_error(two_runs):
    with pytest.raises(UserError, match="no MLflow experiment named nope"):
        runs_table(two_runs, ["nope"])


def _experiment_names(port: int) -> list[str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 100}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return [e["name"] for e in json.load(response)["experiments"]]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_segearth_ui_serves_the_store_and_stops_with_it(two_runs, tmp_path):
    """``segearth ui`` as a user starts it; SIGTERM to it (not to the server) must not leave the server behind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "framework.cli", "ui", "--uri", two_runs, "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = process.stdout.readline()  # printed once the server answers its health check
        assert line.startswith(f"MLflow UI for {two_runs}: http://127.0.0.1:{port}"), line
        assert "dash" in _experiment_names(port)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.time() + 30
        while _answers(port) and time.time() < deadline:
            time.sleep(0.5)
        assert not _answers(port)
    finally:
        if process.poll() is None:
            process.kill()
