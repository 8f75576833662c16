"""Comparing runs: ``segearth runs`` (a table of MLflow runs by component) and ``segearth ui`` (the MLflow server)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from framework.core.errors import UserError
from framework.core.slots import SLOT_NAMES

METRICS = ("val/giou", "val/ciou", "test/giou", "test/ciou", "test_shuffled/giou", "test_image_blind/giou")
HPARAMS = ("model.compressor.ratio", "optim.lr", "data.image_size")
START_TIMEOUT_S = 120  # the server and its job workers start slowly on a busy machine


def runs_table(
    uri: str, experiments: list[str] | None = None, filter_string: str = "", params: list[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run of the named experiments (all when None): components, key hparams (plus ``params``),
    metrics, wall time."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    try:
        if experiments:
            found = [client.get_experiment_by_name(name) for name in experiments]
            missing = [name for name, exp in zip(experiments, found) if exp is None]
            if missing:
                raise UserError(f"no MLflow experiment named {', '.join(missing)} in {uri}")
        else:
            found = client.search_experiments()
        runs = client.search_runs(
            [exp.experiment_id for exp in found], filter_string=filter_string, order_by=["attributes.start_time ASC"]
        )
    except MlflowException as exc:
        raise UserError(f"{uri}: {str(exc).splitlines()[0]}") from None
    names = {exp.experiment_id: exp.name for exp in found}
    rows = []
    extra = params
    for run in runs:
        params, metrics = run.data.params, run.data.metrics
        end = run.info.end_time or int(time.time() * 1000)
        row: dict[str, Any] = {
            "experiment": names[run.info.experiment_id],
            "run": run.info.run_name,
            "status": run.info.status,
        }
        for slot in SLOT_NAMES:
            row[slot] = params.get(f"model.{slot}.name", "–" if slot == "compressor" else "")
        for key in (*HPARAMS, *(extra or ())):
            row[key] = params.get(key, "")
        for key in METRICS:
            row[key] = round(metrics[key], 4) if key in metrics else ""
        row["wall_s"] = round((end - run.info.start_time) / 1000)
        rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """``table`` (aligned text), ``markdown`` or ``csv``."""
    if not rows:
        return "no runs"
    columns = list(rows[0])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    cells = [[str(row[c]) for c in columns] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    fmt_row = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([fmt_row(columns), fmt_row(["-" * w for w in widths]), *map(fmt_row, cells)])


def _die_with_parent() -> None:
    """In the server's process before it starts: on Linux the kernel sends it SIGTERM when ``segearth ui`` ends
    by any means (SIGTERM, SIGHUP, SIGKILL included), so no orphaned server keeps the port; ``mlflow server``
    passes SIGTERM on to its workers."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve(uri: str, port: int, artifacts: str | None = None) -> subprocess.Popen:
    """Start ``mlflow server`` on 127.0.0.1 over the store ``uri``; returns the process once it answers. The
    server ends with the calling process."""
    import tempfile
    import urllib.request

    beside = Path(sys.executable).parent / "mlflow"  # the venv's, also when the venv is not activated
    mlflow = str(beside) if beside.exists() else (shutil.which("mlflow") or "mlflow")
    command = [mlflow, "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    # a file, not a pipe: nobody reads the server's log while it runs, and a full pipe would stall it
    log = tempfile.TemporaryFile("w+")
    # MLflow's job workers (seven processes) serve GenAI features this project does not use; a user may turn them on
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env, preexec_fn=_die_with_parent
    )
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise UserError(f"mlflow server exited: {log.read().strip().splitlines()[-1:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise UserError(f"mlflow server did not answer on 127.0.0.1:{port} within {START_TIMEOUT_S} s")
