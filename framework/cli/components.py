"""``segearth components``: every registered component per slot, with its parameters."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> None:
    # imported here, not at the top: listing the components imports them (torch)
    import framework.data.formats  # noqa: F401  (registers the built-in dataset formats)
    from framework.core.describe import describe_components
    from framework.core.registry import DATASETS

    print(describe_components(args.slot, more={"dataset": DATASETS}))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "components",
        help="list registered components with their parameters",
        description="List every registered component per slot, with its parameters and defaults.",
    )
    p.add_argument("--slot", help="only this slot (encoder, compressor, llm, projector, mask_head, readout, dataset)")
    p.set_defaults(func=run)
