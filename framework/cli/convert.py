"""``segearth convert``: checkpoints of other code bases as weights files or bundles for our components."""

from __future__ import annotations

import argparse
from pathlib import Path

# The library is imported inside the commands: ``segearth --help`` must not pay for torch.


def run_segearth_r1(args: argparse.Namespace) -> None:
    from framework.infer.convert import FAITHFUL_CONFIG, TOKENIZER_FILES, convert_segearth_r1

    config = args.config or FAITHFUL_CONFIG
    conversion = convert_segearth_r1(args.src, args.dst, config=config, overwrite=args.overwrite)
    print(f"wrote bundle {args.dst}: {conversion.summary()}")
    if not any((Path(args.src) / name).is_file() for name in TOKENIZER_FILES):
        print(f"warning: {args.src} has no tokenizer files; the bundle uses the config's tokenizer "
              f"(copy Phi-1.5's tokenizer with [PAD] and [SEG] into {args.src} and convert again)")
    print(f"use it as: segearth predict --model {args.dst} ...  or  segearth test CONFIG --ckpt {args.dst}")


def run_mask2former(args: argparse.Namespace) -> None:
    from framework.infer.convert import convert_mask2former

    conversion = convert_mask2former(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {args.dst}: {conversion.summary()}")
    print(f"use it as model.encoder.weights={args.dst} model.mask_head.weights={args.dst}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` (with one sub-command per source format) to the ``segearth`` sub-commands."""
    parser = subparsers.add_parser(
        "convert",
        help="convert pretrained checkpoints of other code bases into weights files for our components",
        description="Convert pretrained checkpoints of other code bases into weights files for our components.",
    )
    formats = parser.add_subparsers(dest="convert_format", required=True, metavar="FORMAT")
    m2f = formats.add_parser(
        "mask2former",
        help="a detectron2 Mask2Former (Swin) checkpoint -> swin encoder + mask2former head weights",
        description=(
            "Convert an original Mask2Former (detectron2) checkpoint with a Swin backbone, e.g. the model zoo's "
            "model_final_54b88a.pkl the reference starts from, into one file with the swin encoder's weights under "
            "'encoder.' and the mask2former head's under 'mask_head.'. The COCO class head and the learned queries "
            "are dropped. Point model.encoder.weights and model.mask_head.weights at the output."
        ),
    )
    m2f.add_argument("src", help="detectron2 checkpoint (.pkl from the model zoo, or .pth)")
    m2f.add_argument("dst", help="output weights file (.safetensors or .pth)")
    m2f.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    m2f.set_defaults(func=run_mask2former)
    r1 = formats.add_parser(
        "segearth-r1",
        help="a published SegEarth-R1 checkpoint (HF llava_phi folder) -> a model bundle",
        description=(
            "Convert a published SegEarth-R1 checkpoint (a Hugging Face folder: safetensors of the llava_phi model "
            "and its config.json, e.g. earth-insights/SegEarth-R1-EarthReason) into a model bundle of our "
            "components (swin, conv_stride, hf_causal_lm Phi, cross_attention, mask2former). Every tensor is "
            "converted or dropped for a stated reason; an unknown tensor stops the conversion."
        ),
    )
    r1.add_argument("src", help="checkpoint folder (config.json + *.safetensors [+ tokenizer files])")
    r1.add_argument("dst", help="bundle folder to write")
    r1.add_argument("--config", help="experiment the bundle is built from "
                    "(default: experiments/segearth_r1/earthreason.yaml)")
    r1.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    r1.set_defaults(func=run_segearth_r1)
