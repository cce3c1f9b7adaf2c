"""``wm`` subcommands: each module defines ``register(subparsers)`` and its handlers."""

import argparse


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand accepts."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def add_no_verify(parser: argparse.ArgumentParser) -> None:
    """For commands that read files the pipeline wrote (checkpoints, latent caches, generated datasets): sets
    `lerobot_policy_world_modality.file_digests.NO_VERIFY_ENV` while the command runs (`world_modality.cli`)."""
    parser.add_argument(
        "--no-verify",
        dest="skip_verification",
        action="store_true",
        help="do not check files against the sizes and sha256 recorded when they were written",
    )
