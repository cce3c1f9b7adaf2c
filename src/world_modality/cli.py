"""The ``wm`` command line: one subcommand per pipeline stage.

Each stage's options live in ``world_modality.commands.<stage>`` (a ``register(subparsers)`` function);
heavy libraries are imported inside the handlers so ``wm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings

from world_modality import commands

# Subcommands in pipeline order; any other module in world_modality.commands follows alphabetically.
PIPELINE_ORDER = ("data", "latents", "tokens", "train", "intervene", "eval", "report", "matrix", "demo")


def command_modules() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(commands.__path__)}
    return [n for n in PIPELINE_ORDER if n in found] + sorted(found - set(PIPELINE_ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wm",
        description=(
            "world-modality-vla: does predicted future world state, used as memory, make VLA policies act "
            "better? Generate datasets, cache world latents, train baseline and world-memory policies, "
            "evaluate them closed-loop on paired episodes and report the difference."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from world_modality import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        importlib.import_module(f"world_modality.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import torch

    # Subnormal floats (e.g. Adam moments of weights behind a near-zero world gate) slow CPU kernels
    # ~10x. Set before any thread pool exists: OpenMP workers keep the mode they were created with.
    torch.set_flush_denormal(True)
    # ... which numpy then reports once per float type; expected, so not shown.
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"wm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
