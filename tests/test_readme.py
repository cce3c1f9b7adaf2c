"""The README's commands run as written: only its placeholders are filled in and a tiny step count added."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from lerobot_cli import HEADLESS_ENV, REPO, SUBPROCESS_ENV, run_lerobot_eval


def readme_block(after: str) -> list[str]:
    """The command lines of the README's first code block after the text ``after`` (continuations joined)."""
    text = (REPO / "README.md").read_text()
    start = text.index("```", text.index(after))
    body = text[text.index("\n", start) + 1 : text.index("```", start + 3)]
    return [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def filled(line: str, placeholders: dict[str, str]) -> list[str]:
    """A command line split like a shell, each placeholder argument (``X``, ``--flag=X`` or ``--flag=X/sub/path``)
    replaced."""
    out = []
    for token in shlex.split(line):
        flag, sep, value = token.rpartition("=")
        head, slash, rest = value.partition("/")
        out.append(f"{flag}{sep}{placeholders[head]}{slash}{rest}" if head in placeholders else token)
    return out


def decoder_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines of a process's output about torchcodec (LeRobot's video-decoder choice)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "torchcodec" in line.lower()]


@pytest.mark.slow  # lerobot-train and lerobot-eval in subprocesses
def test_readme_latents_lerobot_train_and_eval_lines_run_as_written_headless(metaworld_dataset, tmp_path):
    """As printed, on a headless machine (no MUJOCO_GL, no display): the plugin chooses the rendering backend for
    `lerobot-eval`, and LeRobot's video-decoder fallback is one line at most, not torchcodec's ~280."""
    latents_line, train_line, eval_line = readme_block("LeRobot's own tools work too:")
    placeholders = {"DATA": str(metaworld_dataset), "LAT": str(tmp_path / "latents"), "RUN": str(tmp_path / "run")}
    latents, train, evaluate = (filled(line, placeholders) for line in (latents_line, train_line, eval_line))
    assert latents[:2] == ["wm", "latents"] and train[0] == "lerobot-train" and evaluate[0] == "lerobot-eval"

    bin_dir = REPO / ".venv" / "bin"
    subprocess.run(
        [str(bin_dir / "wm"), *latents[1:], "--learned-steps", "2", "--device", "cpu"],
        check=True,
        env=SUBPROCESS_ENV,
        cwd=tmp_path,
        timeout=600,
        capture_output=True,
    )
    # The learned encoder lives inside the latents folder, nothing beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["latents"]
    assert len(list((tmp_path / "latents").glob("learned-encoder-*/model.safetensors"))) == 1

    tiny = ["--steps=2", "--batch_size=4", "--save_freq=2", "--log_freq=1", "--policy.device=cpu", "--num_workers=0"]
    proc = subprocess.run(
        [str(bin_dir / "lerobot-train"), *train[1:], *tiny],
        env=HEADLESS_ENV,
        cwd=tmp_path,
        timeout=600,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
    assert len(decoder_lines(proc)) <= 1, "\n".join(decoder_lines(proc)[:20])

    # One short episode on CPU (LeRobot's MetaworldEnv: 500 steps at 480 px, cut at 6 here).
    proc = run_lerobot_eval(
        *evaluate[1:],
        "--eval.n_episodes=1",
        "--eval.batch_size=1",
        "--policy.device=cpu",
        f"--output_dir={tmp_path / 'eval'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "eval_info.json").read_text())["overall"]["n_episodes"] == 1
    assert len(decoder_lines(proc)) <= 1, "\n".join(decoder_lines(proc)[:20])
