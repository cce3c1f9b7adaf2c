"""Ruff (configured in pyproject.toml): the whole tree passes its lint rules, and the files already formatted
(FORMATTED) pass its import order and its format too. The one-off commit that formats the whole tree with
`ruff format` and `ruff check --fix --select I` replaces FORMATTED by the tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "src/world_modality"
PLUGIN = "packages/lerobot_policy_world_modality/src/lerobot_policy_world_modality"
FORMATTED = (
    f"{PLUGIN}/errors.py",
    f"{PIPELINE}/cli.py",
    f"{PIPELINE}/commands/__init__.py",
    f"{PIPELINE}/matrix/config.py",
    f"{PIPELINE}/report/__init__.py",
    f"{PIPELINE}/report/markdown.py",
    f"{PIPELINE}/report/plots.py",
    f"{PIPELINE}/report/results.py",
    f"{PIPELINE}/report/tables.py",
    f"{PIPELINE}/training/options.py",
    "tests/test_cli.py",
    "tests/test_lint.py",
    "tests/test_wandb.py",
)


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_the_tree_passes_the_lint_rules_but_import_order():
    result = ruff("check", "--extend-ignore", "I", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_formatted_files_pass_import_order_and_format():
    assert all((REPO / path).is_file() for path in FORMATTED)
    checked = ruff("check", *FORMATTED)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = ruff("format", "--check", "--diff", *FORMATTED)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_the_checks_fail_on_unsorted_imports_and_unformatted_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\nimport os\nx = {'a':1}\n")
    assert ruff("check", "--select", "I", str(bad)).returncode == 1
    assert ruff("format", "--check", str(bad)).returncode == 1
