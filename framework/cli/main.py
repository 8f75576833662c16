"""``segearth``: the parser of every command and the error handling around them.

Each command is a module of this package with ``add_parser(subparsers)``; heavy imports happen inside the commands,
so ``--help`` and config errors are fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from framework.cli import components, convert, data, evaluate, export, fit, predict, runs, serve, sweep
from framework.core.errors import UserError

# No run-time hub access on the machines this targets; albumentations must not query the package index.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

COMMANDS = (fit, evaluate, data, components, runs, convert, predict, serve, export, sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segearth",
        description="Geospatial pixel reasoning: image + implicit question in, answer mask out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow the options: `segearth test x.yaml --ckpt best data.eval_batch_size=2`
    if extra and hasattr(args, "overrides") and not any(item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except UserError as exc:
        print(f"segearth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segearth: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        # Lightning turns SIGTERM into a SystemExit without a code; a scheduler must not read that as success
        if exc.code is None and type(exc).__name__ == "SIGTERMException":
            print("segearth: terminated (SIGTERM)", file=sys.stderr)
            return 143
        raise
    return 0

