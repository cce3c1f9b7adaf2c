"""The README's commands run as written: only its placeholders are filled in and a tiny step count added."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from lerobot_cli import REPO, SUBPROCESS_ENV


def readme_block(after: str) -> list[str]:
    """The command lines of the README's first code block after the text ``after`` (continuations joined)."""
    text = (REPO / "README.md").read_text()
    start = text.index("```", text.index(after))
    body = text[text.index("\n", start) + 1 : text.index("```", start + 3)]
    return [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def filled(line: str, placeholders: dict[str, str]) -> list[str]:
    """A command line split like a shell, each placeholder argument (``X`` or ``--flag=X``) replaced."""
    out = []
    for token in shlex.split(line):
        flag, sep, value = token.rpartition("=")
        out.append(f"{flag}{sep}{placeholders[value]}" if value in placeholders else token)
    return out


@pytest.mark.slow  # lerobot-train in a subprocess
def test_readme_latents_and_lerobot_train_lines_run_as_written(metaworld_dataset, tmp_path):
    latents_line, train_line, _ = readme_block("LeRobot's own tools work too:")
    placeholders = {"DATA": str(metaworld_dataset), "LAT": str(tmp_path / "latents"), "RUN": str(tmp_path / "run")}
    latents, train = filled(latents_line, placeholders), filled(train_line, placeholders)
    assert latents[:2] == ["wm", "latents"] and train[0] == "lerobot-train"

    bin_dir = REPO / ".venv" / "bin"
    subprocess.run([str(bin_dir / "wm"), *latents[1:], "--learned-steps", "2", "--device", "cpu"], check=True,
                   env=SUBPROCESS_ENV, cwd=tmp_path, timeout=600, capture_output=True)
    # The learned encoder lives inside the latents folder, nothing beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["latents"]
    assert len(list((tmp_path / "latents").glob("learned-encoder-*/model.safetensors"))) == 1

    tiny = ["--steps=2", "--batch_size=4", "--save_freq=2", "--log_freq=1", "--policy.device=cpu", "--num_workers=0"]
    proc = subprocess.run([str(bin_dir / "lerobot-train"), *train[1:], *tiny], env=SUBPROCESS_ENV, cwd=tmp_path,
                          timeout=600, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors").is_file()
