"""``segearth export``: a checkpoint as a self-contained model bundle, optionally registered in MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from framework.cli.common import add_config_arguments
from framework.core.errors import UserError


def run(args: argparse.Namespace) -> None:
    from framework.core.config import load_config
    from framework.infer.bundle import export, register
    from framework.track.run_dirs import resolve_checkpoint

    cfg = load_config(args.config, args.overrides)
    if args.alias and not args.register:
        raise UserError("export: --alias needs --register NAME")
    ckpt_path = resolve_checkpoint(cfg, args.ckpt)
    out = export(cfg, ckpt_path, Path(args.out), merge=args.merge_lora, overwrite=args.overwrite)
    print(f"wrote bundle {out} from {ckpt_path}")
    if args.register:
        uri = args.uri or cfg["tracking"]["uri"]
        version = register(
            out, args.register, args.alias, uri, cfg["tracking"]["experiment"], Path(cfg["output_dir"]) / "mlartifacts"
        )
        target = f"models:/{args.register}@{args.alias}" if args.alias else f"models:/{args.register}/{version}"
        print(f"registered {args.register} version {version} in {uri}: load it as {target}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a self-contained model bundle (config + safetensors) and register it in MLflow",
        description="Write a self-contained model bundle (resolved config + safetensors weights of every slot; "
        "loads without the original weights files) and optionally register it in the MLflow model registry.",
    )
    add_config_arguments(p)
    p.add_argument("--ckpt", default="best", help="checkpoint file, or 'best' / 'last' of the newest run (default)")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--merge-lora", action="store_true", help="fold LoRA adapters into the LLM's weights")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--register", metavar="NAME", help="register the bundle as a version of this registered model")
    p.add_argument("--alias", help="point this alias (e.g. best) at the new version")
    p.add_argument("--uri", help="tracking/registry URI (default: the config's tracking.uri)")
    p.set_defaults(func=run)
