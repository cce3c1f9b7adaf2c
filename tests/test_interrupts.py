"""Interrupts: SIGINT (a terminal's Ctrl-C, sent to the whole process group) and SIGTERM (to the main process, or to
the whole group as a service manager sends it) end every `wm` command with exactly one line, no traceback from any
process (simulator workers, dataset-generation workers, a matrix's training processes), exit status 130 / 143, and
the exact command that resumes; that command then completes from what was finished."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import SUBPROCESS_ENV
from lerobot_cli import REPO
from world_modality.atomic_io import read_jsonl

WM = REPO / ".venv" / "bin" / "wm"
TIMEOUT_S = 600


def interrupt(args: list, ready: Callable[[], bool], signum: int, whole_group: bool, tmp_path: Path) -> tuple[int, str]:
    """Start `wm ARGS` in a process group of its own, send ``signum`` (to the group, or to the main process alone)
    once ``ready()``, and return its exit status and stderr."""
    err_file = tmp_path / "stderr.txt"
    with open(tmp_path / "stdout.txt", "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen(
            [str(WM), *map(str, args)], env=SUBPROCESS_ENV, cwd=REPO, stdout=out, stderr=err, start_new_session=True
        )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while not ready():
                assert proc.poll() is None, f"`wm {args[0]}` ended before it was interrupted:\n{err_file.read_text()}"
                assert time.monotonic() < deadline, "never ready to be interrupted"
                time.sleep(0.1)
            (os.killpg if whole_group else os.kill)(proc.pid, signum)
            status = proc.wait(timeout=TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return status, err_file.read_text()


def resume_line(err: str, command: str, signum: int, resume: list) -> str:
    """The one line an interrupt leaves: the last of stderr, no traceback before it; returns the command it names."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    name = signal.Signals(signum).name
    expected = (
        f"wm {command}: interrupted by {name}; what finished is kept. Resume with: {shlex.join(map(str, resume))}"
    )
    assert lines[-1] == expected and sum("interrupted" in line for line in lines) == 1, err[-3000:]
    return lines[-1].split("Resume with: ", 1)[1]


def completes(command: str) -> None:
    """The command runs to its end, and no process of it prints a traceback on the way (nor at its end, when it
    stops its workers)."""
    proc = subprocess.run(
        shlex.split(command),
        env=SUBPROCESS_ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-3000:]


# A worker whose SIGTERM lands inside a constructor: the half-made object's finaliser reads what was never set.
HALF_BUILT_WORKER = """
import time
from world_modality.interrupts import exit_on_sigterm

class Context:
    def __init__(self):
        print("constructing", flush=True)
        time.sleep(60)
        self.handle = 1

    def __del__(self):
        self.handle

exit_on_sigterm()
Context()
"""


def test_a_worker_ended_inside_a_constructor_exits_silently():
    """SIGTERM ends a worker silently even when it lands mid-construction (as in MuJoCo's GL context at a first
    render): no "Exception ignored" from the half-made object's finaliser."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HALF_BUILT_WORKER],
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "constructing\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == "", err


@pytest.mark.slow
def test_wm_data_metaworld_ends_its_workers_silently(tmp_path):
    """A normal end stops the generation workers too: none may print a traceback then (each shuts OpenGL down at
    exit, where a stop signal used to land)."""
    completes(
        shlex.join(
            map(
                str,
                [
                    WM,
                    "data",
                    "metaworld",
                    "--tasks",
                    "reach-v3,drawer-close-v3,push-v3",
                    "--episodes-per-task",
                    "1",
                    "--image-size",
                    "32",
                    "--workers",
                    "3",
                    "--out",
                    tmp_path / "data",
                ],
            )
        )
    )


def last_step(run: Path) -> int:
    last = run / "checkpoints" / "last"
    return int(last.resolve().name) if last.exists() else 0


@pytest.mark.parametrize(
    ("signum", "whole_group"), [(signal.SIGINT, True), pytest.param(signal.SIGTERM, False, marks=pytest.mark.slow)]
)
def test_wm_train_interrupted_says_how_to_resume_and_the_resume_completes(
    metaworld_dataset, state_latents, tmp_path, signum, whole_group
):
    run = tmp_path / "run"
    args = [
        "train",
        metaworld_dataset,
        "--latents",
        state_latents,
        "--model-type",
        "F",
        "--steps",
        "80",
        "--batch-size",
        "8",
        "--save-every",
        "2",
        "--device",
        "cpu",
        "--out",
        run,
    ]
    status, err = interrupt(args, lambda: last_step(run) >= 2, signum, whole_group, tmp_path)
    assert status == 128 + signum
    command = resume_line(err, "train", signum, [WM, *args, "--resume"])
    interrupted_at = last_step(run)
    assert 2 <= interrupted_at < 80  # what finished is there, and the rest is not
    completes(command)
    assert last_step(run) == 80


@pytest.mark.parametrize(
    ("signum", "whole_group"), [(signal.SIGTERM, True), pytest.param(signal.SIGINT, True, marks=pytest.mark.slow)]
)
def test_wm_eval_interrupted_stops_its_simulator_workers_silently_and_the_rerun_completes(
    metaworld_dataset, state_latents, tmp_path, signum, whole_group
):
    from world_modality.training.trainer import TrainOptions, train

    checkpoint = train(
        TrainOptions(
            dataset=str(metaworld_dataset),
            latents=str(state_latents),
            out=str(tmp_path / "run"),
            model_type="A",
            steps=2,
            batch_size=8,
            device="cpu",
            progress=False,
        )
    )
    out = tmp_path / "eval"
    args = [
        "eval",
        checkpoint,
        "--tasks",
        "reach-v3",
        "--episodes-per-task",
        "4",
        "--max-steps",
        "25",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--out",
        out,
    ]
    episodes = out / "episodes.jsonl"
    status, err = interrupt(
        args, lambda: episodes.is_file() and bool(read_jsonl(episodes)), signum, whole_group, tmp_path
    )
    assert status == 128 + signum
    completes(resume_line(err, "eval", signum, [WM, *args]))
    ids = [r["episode_id"] for r in read_jsonl(episodes)]
    assert len(ids) == len(set(ids)) == 4


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_wm_data_metaworld_interrupted_stops_its_workers_and_the_rerun_completes(tmp_path, signum, whole_group):
    out = tmp_path / "data"
    args = [
        "data",
        "metaworld",
        "--tasks",
        "reach-v3,drawer-close-v3",
        "--episodes-per-task",
        "3",
        "--image-size",
        "32",
        "--workers",
        "2",
        "--out",
        out,
    ]
    staged = tmp_path / ".data.staging"
    status, err = interrupt(args, lambda: any(staged.glob("*/**/*.parquet")), signum, whole_group, tmp_path)
    assert status == 128 + signum
    completes(resume_line(err, "data", signum, [WM, *args]))
    assert (out / "meta" / "info.json").is_file() and not staged.exists()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "whole_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_wm_matrix_interrupted_stops_its_training_processes_and_the_rerun_completes(
    metaworld_dataset, tmp_path, signum, whole_group
):
    """Local executor: each training in a process of its own beside this process's evaluations."""
    config = tmp_path / "matrix.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": {"path": str(metaworld_dataset)},
                "encoders": [{"name": "state"}],
                "training": {"steps": 60, "batch_size": 8, "save_every": 2, "device": "cpu"},
                "arms": {"E0": {"model_type": "A"}},
                "evaluation": {
                    "tasks": ["reach-v3"],
                    "episodes_per_task": 1,
                    "max_steps": 5,
                    "workers": 1,
                    "concurrent": True,
                },
            }
        )
    )
    run = tmp_path / "run"
    args = ["matrix", config, "--out", run]
    status, err = interrupt(args, lambda: last_step(run / "train" / "E0" / "seed0") >= 2, signum, whole_group, tmp_path)
    assert status == 128 + signum
    assert last_step(run / "train" / "E0" / "seed0") < 60
    completes(resume_line(err, "matrix", signum, [WM, *args]))
    assert (run / "report" / "report.md").is_file() and last_step(run / "train" / "E0" / "seed0") == 60
