"""`segearth runs` and `segearth ui` against a real sqlite MLflow store and a real MLflow server."""

import json
import socket
import urllib.request

import mlflow
import pytest

from framework.dashboard import render, runs_table, serve
from framework.errors import UserError


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


@pytest.mark.slow
def test_ui_server_answers_rest_calls(two_runs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = serve(two_runs, port, artifacts=(tmp_path / "artifacts").as_uri())
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 100}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            names = [e["name"] for e in json.load(response)["experiments"]]
        assert "dash" in names
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode is not None
