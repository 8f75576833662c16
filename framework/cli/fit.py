"""``segearth fit``: train an experiment (``framework.train.fit``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from framework.cli.common import add_config_arguments
from framework.core.errors import UserError


def run(args: argparse.Namespace) -> None:
    # imported here, not at the top: ``segearth --help`` must not pay for torch and Lightning
    from framework.core.config import load_config
    from framework.train.fit import fit

    cfg = load_config(args.config, args.overrides)
    callbacks, tags = [], {}
    if args.sweep_trial:
        from framework.sweep.trial import pruning_callbacks

        try:
            trial = json.loads(Path(args.sweep_trial).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"--sweep-trial {args.sweep_trial}: cannot read the trial file ({exc})") from None
        callbacks, tags = pruning_callbacks(trial), trial["tags"]
    fit(cfg, resume=args.resume, callbacks=callbacks, tags=tags)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train an experiment", description="Train an experiment config.")
    add_config_arguments(p)
    p.add_argument(
        "--resume",
        help="continue a run from a checkpoint: 'last' / 'best' of the newest run of this experiment, or a path "
        "(weights, optimiser, scheduler, random states and data position; the run folder is the checkpoint's)",
    )
    # written by the sweep controller for each trial's job: where to report for pruning, the run's MLflow tags
    p.add_argument("--sweep-trial", help=argparse.SUPPRESS)
    p.set_defaults(func=run)
