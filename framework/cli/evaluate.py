"""``segearth validate`` and ``segearth test``: evaluate trained weights (``framework.train.evaluate``)."""

from __future__ import annotations

import argparse

from framework.cli.common import add_config_arguments

COMMANDS = {
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split (with the shuffled-question and image-blind controls)",
}


def run(args: argparse.Namespace) -> None:
    # imported here, not at the top: ``segearth --help`` must not pay for torch and Lightning
    from framework.core.config import load_config
    from framework.infer.bundle import resolve_weights
    from framework.train.evaluate import evaluate

    cfg = load_config(args.config, args.overrides)
    if getattr(args, "no_shuffled", False):
        cfg["eval"]["shuffled_control"] = False
    if getattr(args, "no_image_blind", False):
        cfg["eval"]["image_blind_control"] = False
    weights = resolve_weights(cfg, args.ckpt) if args.ckpt else None
    evaluate(cfg, weights, stage=args.command, out=args.out)


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, text in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_config_arguments(p)
        p.add_argument(
            "--ckpt",
            help="checkpoint file, 'best' / 'last' of the newest run of this experiment, a bundle folder "
            "('segearth export') or models:/NAME@ALIAS",
        )
        p.add_argument("--out", help="folder for results (default: the checkpoint's run folder)")
        if name == "test":
            p.add_argument("--no-shuffled", action="store_true", help="skip the shuffled-question control")
            p.add_argument(
                "--no-image-blind", action="store_true",
                help="skip the image-blind control (questions answered with another image's visual tokens)",
            )
        p.set_defaults(func=run)
