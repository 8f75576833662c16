"""``segearth runs`` (a table of tracked runs) and ``segearth ui`` (the MLflow UI over the store)."""

from __future__ import annotations

import argparse

from framework.track.run_info import default_tracking_uri


def run_table(args: argparse.Namespace) -> None:
    # imported here, not at the top: ``segearth --help`` must not pay for MLflow
    from framework.track.run_table import render, runs_table

    rows = runs_table(default_tracking_uri(args.uri), args.experiment, args.filter or "", args.param)
    print(render(rows, args.format))


def run_ui(args: argparse.Namespace) -> None:
    from framework.track.run_table import serve

    uri = default_tracking_uri(args.uri)
    process = serve(uri, args.port)
    print(f"MLflow UI for {uri}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(timeout=20)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="compare tracked runs in a table",
        description="One row per MLflow run: components per slot, key hyperparameters, val/test gIoU and cIoU, wall time.",
    )
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--experiment", action="append", help="only this MLflow experiment (repeatable)")
    p.add_argument("--filter", help="MLflow filter, e.g. \"tags.sweep = 's1'\" or \"params.`model.compressor.name` = 'perceiver'\"")
    p.add_argument("--param", action="append", help="also show this param column, e.g. model.llm.pooling")
    p.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    p.set_defaults(func=run_table)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1", description="Serve the MLflow UI over the store.")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=run_ui)
