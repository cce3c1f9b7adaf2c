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
import warnings
from pathlib import Path

from world_modality import commands, interrupts

# Errors that say what is wrong in their message (bad input, damaged or missing files): one paragraph, exit 2,
# no traceback unless --debug. Anything else is a bug and shows its traceback.
KNOWN_ERRORS = (ValueError, OSError, RuntimeError)
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
    parser.add_argument("--debug", dest="debug_all", action="store_true", help="show the full traceback on errors (any command)")
    parser.add_argument("--no-verify", dest="skip_all_verification", action="store_true",
                        help="do not check files the pipeline wrote against the digests recorded when they were written")
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
        print(f"\n{command}: interrupted by {signal.Signals(signum).name}; what finished is kept. Resume with: "
              f"{resume_command(args, argv)}", file=sys.stderr)
    return interrupts.exit_status(signum)


def _run(args: argparse.Namespace) -> int:
    import torch

    # Subnormal floats (e.g. Adam moments of weights behind a near-zero world gate) slow CPU kernels
    # ~10x. Set before any thread pool exists: OpenMP workers keep the mode they were created with.
    torch.set_flush_denormal(True)
    # ... which numpy then reports once per float type; expected, so not shown.
    warnings.filterwarnings("ignore", message="The value of the smallest subnormal", category=UserWarning)
    from lerobot_policy_world_modality.file_digests import NO_VERIFY_ENV

    skip = args.skip_all_verification or getattr(args, "skip_verification", False)
    set_here = skip and NO_VERIFY_ENV not in os.environ
    if set_here:  # an environment variable, so simulator and data-loader processes skip too
        os.environ[NO_VERIFY_ENV] = "1"
    try:
        return args.handler(args) or 0
    except KNOWN_ERRORS as e:
        if args.debug_all or getattr(args, "debug", False) or interrupts.interrupting_signal(e) is not None:
            raise
        print(f"wm {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if set_here:
            del os.environ[NO_VERIFY_ENV]


if __name__ == "__main__":
    sys.exit(main())
