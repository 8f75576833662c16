"""Arguments several commands share."""

from __future__ import annotations

import argparse
from typing import Any


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment YAML and its dotted overrides."""
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.compressor.ratio=4")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model to answer with and how to run it (``segearth predict``, ``segearth serve``)."""
    parser.add_argument("--model", required=True, help="bundle folder, models:/NAME@ALIAS, run folder or .ckpt file")
    parser.add_argument("--tiling", choices=("auto", "always", "never"),
                        help="default: the model config's predict.tiling")
    parser.add_argument("--tile-size", type=int, help="tile side in native pixels (default: predict.tile_size)")
    parser.add_argument("--overlap", type=float, help="fraction of a tile shared with its neighbours (default 0.25)")
    parser.add_argument("--tile-batch", type=int, help="tiles encoded at once (bounds memory)")
    parser.add_argument("--tta", choices=("none", "flips", "dihedral"), help="test-time augmentation: mean logits of "
                        "4 or 8 flipped/turned views (default: predict.tta)")
    parser.add_argument("--batch-size", type=int, default=8, help="(tile, question) pairs per forward pass")
    parser.add_argument("--answer-tokens", type=int, help="a model trained to answer in words: most tokens of its "
                        "answer text, 0 for masks only (default: predict.answer_tokens)")
    parser.add_argument("--target-threshold", type=float, help="a model with a target decision: answers below this "
                        "target probability are \"no target\" (default: the model config's eval.target_threshold)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--uri", help="tracking URI for models:/ (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)")


def load_model_of(args: argparse.Namespace) -> Any:
    """The ``Predictor`` of ``add_model_arguments``' arguments."""
    from framework.infer.predictor import load_model

    return load_model(
        args.model, device=args.device, tracking_uri=args.uri, batch_size=args.batch_size, tiling=args.tiling,
        tile_size=args.tile_size, overlap=args.overlap, tile_batch=args.tile_batch, tta=args.tta,
        answer_tokens=args.answer_tokens, target_threshold=args.target_threshold,
    )
