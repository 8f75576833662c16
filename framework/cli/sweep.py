"""``segearth sweep``: run an Optuna sweep over an experiment (``framework.sweep.controller``)."""

from __future__ import annotations

import argparse

from framework.sweep.storage import DEFAULT_STORAGE


def run(args: argparse.Namespace) -> None:
    # imported here: ``segearth --help`` must not pay for optuna
    from framework.sweep.controller import run_sweep

    run_sweep(
        args.sweep, args.storage, args.workers, args.n_trials, args.timeout,
        report=not args.no_report, trials=not args.report,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run an Optuna sweep over an experiment (parallel, pruned, resumable)",
        description="Run the Optuna study of a sweep YAML: each trial is a `segearth fit` process. Re-running the "
        "command resumes the study; controllers on other machines join it through the same --storage URL.",
    )
    p.add_argument("sweep", help="sweep YAML (e.g. experiments/sweeps/compression_projection.yaml)")
    p.add_argument("--workers", type=int, default=1, help="controllers run in parallel on this machine (default 1)")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help=f"Optuna storage URL (default {DEFAULT_STORAGE}; postgresql://user:pw@host/db for several machines)")
    p.add_argument("--report", action="store_true", help="only write the report of the study as it stands")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--n-trials", type=int, help="override budget.n_trials (total over all workers and runs)")
    p.add_argument("--timeout", type=float, help="override budget.timeout_s (per controller, seconds)")
    p.set_defaults(func=run)
