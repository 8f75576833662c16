"""Arguments several commands share."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment YAML and its dotted overrides."""
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.compressor.ratio=4")
