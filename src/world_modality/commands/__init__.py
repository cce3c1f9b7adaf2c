"""``wm`` subcommands: each module defines ``register(subparsers)`` and its handlers."""

import argparse


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand accepts."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
