"""``segearth data``: make datasets (the synthetic scenes, the Dubai tiles in EarthReason layout)."""

from __future__ import annotations

import argparse
from pathlib import Path


def run_synth(args: argparse.Namespace) -> None:
    # imported here, not at the top: ``segearth --help`` must not pay for numpy and PIL
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


def run_dubai(args: argparse.Namespace) -> None:
    from framework.data.dubai import convert_dubai

    counts = convert_dubai(
        Path(args.src), Path(args.out), seed=args.seed, overwrite=args.overwrite,
        heldout_phrasings=args.heldout_phrasings,
    )
    print(f"wrote {args.out}: " + ", ".join(f"{split} {n} samples" for split, n in counts.items()))


def add_parser(sub: argparse._SubParsersAction) -> None:
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
    s.set_defaults(func=run_synth)
    s = data_sub.add_parser(
        "dubai",
        help="convert the Dubai aerial tiles (real masks) to EarthReason layout with templated questions",
        description="Convert the Dubai aerial tiles to EarthReason layout: tiles 1-4 train, tile 5 val, tile 6 test; images are "
        "symlinked, labels are one binary mask per class, questions are templated implicit phrasings.",
    )
    s.add_argument("--src", required=True, help="folder holding tile-1 .. tile-6 (e.g. ../shared/data/dubai-aerial)")
    s.add_argument("--out", required=True, help="output folder (outside the repository's tracked files)")
    s.add_argument("--seed", type=int, default=0, help="seed of the question draw (default 0)")
    s.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    s.add_argument("--heldout-phrasings", choices=("own", "train"), default="own",
                   help="phrasing pool tiles 5 and 6 are asked from: own (each split's unseen phrasings, the "
                   "benchmark; default) or train (a diagnostic that takes unseen phrasings out of the score)")
    s.set_defaults(func=run_dubai)
