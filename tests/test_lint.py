"""Ruff (configured in pyproject.toml): the whole tree passes its lint rules (pycodestyle, pyflakes, import order)
and its format; `.venv/bin/ruff format . && .venv/bin/ruff check --fix .` makes a change pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_the_tree_passes_the_lint_rules():
    result = ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_tree_is_formatted():
    formatted = ruff("format", "--check", "--diff", ".")
    assert formatted.returncode == 0, formatted.stdout[-5000:] + formatted.stderr


def test_the_checks_fail_on_unsorted_imports_and_unformatted_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\nx = {'a':1}\n")
    assert ruff("check", "--select", "I", str(bad)).returncode == 1
    assert ruff("format", "--check", str(bad)).returncode == 1
