"""The ``segearth`` command. Heavy imports happen inside the commands, so ``--help`` and config errors are fast."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from framework.errors import UserError

# No run-time hub access on the machines this targets; albumentations must not query the package index.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)


def _load(args: argparse.Namespace) -> dict:
    from framework.config import load_config

    return load_config(args.config, args.overrides)


def cmd_fit(args: argparse.Namespace) -> None:
    from framework.run import fit

    fit(_load(args), resume=args.resume)


def cmd_validate(args: argparse.Namespace) -> None:
    from framework.run import evaluate

    evaluate(_load(args), args.ckpt, stage="validate", out=args.out)


def cmd_test(args: argparse.Namespace) -> None:
    from framework.run import evaluate

    cfg = _load(args)
    if args.no_shuffled:
        cfg["eval"]["shuffled_control"] = False
    evaluate(cfg, args.ckpt, stage="test", out=args.out)


def cmd_data_synth(args: argparse.Namespace) -> None:
    from pathlib import Path

    from framework.data.synth import write_synthetic_dataset

    counts = write_synthetic_dataset(
        Path(args.out),
        n=args.n,
        seed=args.seed,
        image_size=args.image_size,
        samples_per_scene=args.samples_per_scene,
        overwrite=args.overwrite,
    )
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n} samples" for split, n in counts.items()))


def cmd_data_dubai(args: argparse.Namespace) -> None:
    from pathlib import Path

    from framework.data.dubai import convert_dubai

    counts = convert_dubai(
        Path(args.src), Path(args.out), seed=args.seed, overwrite=args.overwrite, val_phrasings=args.val_phrasings
    )
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n} samples" for split, n in counts.items()))


def cmd_components(args: argparse.Namespace) -> None:
    from framework.describe import describe_components

    print(describe_components(args.slot))


def _tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db"


def cmd_runs(args: argparse.Namespace) -> None:
    from framework.dashboard import render, runs_table

    rows = runs_table(_tracking_uri(args.uri), args.experiment, args.filter or "", args.param)
    print(render(rows, args.format))


def cmd_ui(args: argparse.Namespace) -> None:
    from framework.dashboard import serve

    uri = _tracking_uri(args.uri)
    process = serve(uri, args.port)
    print(f"MLflow UI for {uri}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)")
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait(timeout=20)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segearth",
        description="Geospatial pixel reasoning: image + implicit question in, answer mask out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="experiment YAML")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.compressor.ratio=4")

    p = sub.add_parser("fit", help="train an experiment", description="Train an experiment config.")
    with_config(p)
    p.add_argument(
        "--resume",
        help="continue a run from a checkpoint: 'last' / 'best' of the newest run of this experiment, or a path "
        "(weights, optimiser, scheduler, random states and data position; the run folder is the checkpoint's)",
    )
    p.set_defaults(func=cmd_fit)

    for name, func, text in (
        ("validate", cmd_validate, "evaluate a checkpoint on the validation split"),
        ("test", cmd_test, "evaluate a checkpoint on the test split (with the shuffled-question control)"),
    ):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        with_config(p)
        p.add_argument(
            "--ckpt",
            help="checkpoint file, 'best' / 'last' of the newest run of this experiment, a bundle folder "
            "('segearth export') or models:/NAME@ALIAS",
        )
        p.add_argument("--out", help="folder for results (default: the checkpoint's run folder)")
        if name == "test":
            p.add_argument("--no-shuffled", action="store_true", help="skip the shuffled-question control")
        p.set_defaults(func=func)

    p = sub.add_parser("data", help="make datasets", description="Make datasets.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = data_sub.add_parser(
        "synth",
        help="write procedurally generated aerial scenes in EarthReason layout",
        description="Write procedurally generated aerial scenes with implicit questions in EarthReason layout.",
    )
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--n", type=int, default=600, help="number of scenes over all splits (default 600)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--samples-per-scene", type=int, default=3, help="questions asked of each scene (default 3)")
    s.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    s.set_defaults(func=cmd_data_synth)
    s = data_sub.add_parser(
        "dubai",
        help="convert the Dubai aerial tiles (real masks) to EarthReason layout with templated questions",
        description="Convert the Dubai aerial tiles to EarthReason layout: tiles 1-5 train, tile 6 val; images are "
        "symlinked, labels are one binary mask per class, questions are templated implicit phrasings.",
    )
    s.add_argument("--src", required=True, help="folder holding tile-1 .. tile-6 (e.g. ../shared/data/dubai-aerial)")
    s.add_argument("--out", required=True, help="output folder (outside the repository's tracked files)")
    s.add_argument("--seed", type=int, default=0, help="seed of the question draw (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    s.add_argument("--val-phrasings", choices=("val", "train"), default="val",
                   help="phrasing pool tile 6 is asked from: val (unseen, the benchmark; default) or train (a "
                   "diagnostic that takes unseen phrasings out of the score)")
    s.set_defaults(func=cmd_data_dubai)

    p = sub.add_parser(
        "components",
        help="list registered components with their parameters",
        description="List every registered component per slot, with its parameters and defaults.",
    )
    p.add_argument("--slot", help="only this slot (encoder, compressor, llm, projector, mask_head, dataset)")
    p.set_defaults(func=cmd_components)

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
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1", description="Serve the MLflow UI over the store.")
    p.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    from framework.bundle import add_export_parser
    from framework.convert import add_convert_parser
    from framework.predict_cli import add_predict_parser
    from framework.sweep import add_sweep_parser

    add_convert_parser(sub)
    add_predict_parser(sub)
    add_export_parser(sub)
    add_sweep_parser(sub)
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


if __name__ == "__main__":
    sys.exit(main())
