"""What a benchmark's result file records about where it ran: the device, the code's commit and the date."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The repository's short HEAD commit, with "+modified" when tracked files differ from it (the figures are then
    of code no commit holds: e.g. a copy of a working tree whose git history is older); "unknown" outside a git
    checkout."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("+modified" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str) -> str:
    """The GPU's name for a CUDA device ("cuda", "cuda:1"), else the CPU and its core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def today() -> str:
    return datetime.date.today().isoformat()


def stamp(device: str) -> dict[str, str]:
    """The fields every result file starts with: where (``device``: "cpu", "cuda", ...), when, and which code ran."""
    return {"device": device_name(device), "date": today(), "commit": commit()}


def write_figures(path: Path, figures: dict) -> None:
    """A benchmark's result file (JSON), its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {path}")
