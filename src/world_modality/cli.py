"""The ``wm`` command line: one subcommand per pipeline stage.

Each stage's options live in ``world_modality.commands.<stage>`` (a ``register(subparsers)`` function);
heavy libraries are imported inside the handlers so ``wm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shlex
import signal
import sys
import traceback
import warnings
from pathlib import Path

from lerobot_policy_world_modality.errors import BUG_REPORT, WorldModalityError
from world_modality import commands, interrupts

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


def resume_command(args: argparse.Namespace | None, argv: list[str]) -> str:
    """The command that resumes an interrupted one: the same arguments, plus the flags its subcommand needs to
    resume (``resume_flags`` in its defaults, e.g. ``wm train``'s --resume)."""
    program = sys.argv[0] if Path(sys.argv[0]).name == "wm" else "wm"
    return shlex.join([program, *argv, *(flag for flag in getattr(args, "resume_flags", ()) if flag not in argv)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = None
    with interrupts.raised_in_main():
        try:
            args = build_parser().parse_args(argv)
            return _run(args)
        except BaseException as e:  # noqa: BLE001 - an interrupt, whatever it broke on the way out, is one line
            signum = interrupts.interrupting_signal(e)
            if signum is None:
                raise
    if int(os.environ.get("RANK", "0")) == 0:  # one line, not one per `accelerate launch` process
        command = f"wm {args.command}" if args is not None else "wm"
        print(
            f"\n{command}: interrupted by {signal.Signals(signum).name}; what finished is kept. Resume with: "
            f"{resume_command(args, argv)}",
            file=sys.stderr,
        )
    return interrupts.exit_status(signum)


def _run(args: argparse.Namespace) -> int:
    import torch

    # Subnormal floats (e.g. Adam moments of weights behind a near-zero world gate) slow CPU kernels
    # ~10x. Set before any thread pool exists: OpenMP workers keep the mode they were created with.
    torch.set_flush_denormal(True)
    # ... which numpy then reports once per float type; expected, so not shown.
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
    from lerobot_policy_world_modality.file_digests import NO_VERIFY_ENV

    set_here = getattr(args, "skip_verification", False) and NO_VERIFY_ENV not in os.environ
    if set_here:  # an environment variable, so simulator and data-loader processes skip too
        os.environ[NO_VERIFY_ENV] = "1"
    try:
        return args.handler(args) or 0
    except Exception as e:
        if interrupts.interrupting_signal(e) is not None:
            raise
        if not says_what_is_wrong(e):  # a bug: its traceback, and who to tell
            traceback.print_exc()
            print(f"wm {args.command}: {BUG_REPORT}", file=sys.stderr)
            return 1
        if args.debug:
            raise
        print(f"wm {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if set_here:
            del os.environ[NO_VERIFY_ENV]


def says_what_is_wrong(error: BaseException) -> bool:
    """Whether ``error`` is one of the project's own errors, whose message says what is wrong and how to fix it
    (printed as one paragraph); anything else is a bug."""
    return isinstance(error, WorldModalityError)


if __name__ == "__main__":
    sys.exit(main())
