"""The `wm` command line: each flag declared once on the way to a command, and errors told apart: the project's own
(one paragraph, exit 2) from bugs (their traceback and a line asking to report them, exit 1)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from lerobot_policy_world_modality.errors import BUG_REPORT, InputError
from world_modality.cli import build_parser, main, says_what_is_wrong


def command_paths(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[argparse.ArgumentParser]]]:
    """(command words, the parsers from ``wm`` down to it) of every command."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield path, [parser]
        return
    for action in subcommands:
        for name, child in action.choices.items():
            for words, parsers in command_paths(child, (*path, name)):
                yield words, [parser, *parsers]


def options(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")]


def test_each_flag_is_declared_once_on_the_way_to_every_command():
    paths = list(command_paths(build_parser()))
    assert len(paths) > 10
    for words, parsers in paths:
        flags = [flag for p in parsers for flag in options(p)]
        twice = sorted({f for f in flags if flags.count(f) > 1})
        assert not twice, f"wm {' '.join(words)} declares {twice} more than once (on the top-level parser and its own)"
        assert "--debug" in options(parsers[-1]), f"wm {' '.join(words)} has no --debug"


def test_the_declared_once_check_fails_on_a_flag_declared_at_two_levels():
    parser = argparse.ArgumentParser()
    parser.add_argument("--debug", action="store_true")
    parser.add_subparsers().add_parser("x").add_argument("--debug", action="store_true")
    ((words, parsers),) = command_paths(parser)
    flags = [flag for p in parsers for flag in options(p)]
    assert words == ("x",) and flags.count("--debug") == 2


def test_libero_setup_names_its_env_check_apart_from_no_verify():
    args = build_parser().parse_args(["libero", "setup", "--skip-env-check"])
    assert args.skip_env_check and not hasattr(args, "skip_verification")
    assert build_parser().parse_args(["matrix", "m.yaml", "--no-verify"]).skip_verification


def failing_report(error: BaseException):
    def write_report(*args, **kwargs):
        raise error

    return write_report


def test_a_project_error_is_one_paragraph_and_debug_shows_its_traceback(monkeypatch, tmp_path, capsys):
    import world_modality.report

    monkeypatch.setattr(world_modality.report, "write_report", failing_report(InputError("the run folder is empty")))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "wm report: error: the run folder is empty\n"
    with pytest.raises(InputError, match="the run folder is empty"):
        main(["report", str(tmp_path), "--debug"])


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        ValueError("Expected input batch_size (4) to match target batch_size (3)"),
        FileNotFoundError(2, "No such file or directory"),
    ],
)
def test_any_other_error_is_a_bug_with_its_traceback_and_a_line_to_report_it(error, monkeypatch, tmp_path, capsys):
    """A built-in error raised below `wm` (torch, a library) says nothing the user can fix: its traceback stays."""
    import world_modality.report

    monkeypatch.setattr(world_modality.report, "write_report", failing_report(error))
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and str(error) in err
    assert err.rstrip().endswith(f"wm report: {BUG_REPORT}")


def test_wm_trains_refusals_are_project_errors_and_a_built_in_error_is_a_bug():
    from world_modality.training.trainer import policy_config_class

    with pytest.raises(InputError) as raised:
        policy_config_class("no_such_policy")
    assert says_what_is_wrong(raised.value)
    assert not says_what_is_wrong(ValueError("raised by a library: says nothing a user can fix"))
