"""`bash run.sh wheelhouse` (scripts/wheelhouse.py): a wheelhouse built here installs on a machine with no
package registry. Building reaches PyPI (as CI does); installing must not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _wheelhouse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "run.sh"), "wheelhouse", *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def _probe_project(root: Path) -> Path:
    """A tiny local project (like ours) that needs one registry package."""
    (root / "wm_wheelhouse_probe").mkdir(parents=True)
    (root / "wm_wheelhouse_probe" / "__init__.py").write_text("import six\n\nVALUE = six.ensure_str(b'offline ok')\n")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "wm-wheelhouse-probe"\nversion = "0.1.0"\nrequires-python = ">=3.12"\ndependencies = ["six"]\n'
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["wm_wheelhouse_probe"]\n'
    )
    return root


def test_wheelhouse_installs_into_a_fresh_venv_with_the_registry_switched_off(tmp_path):
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    out = tmp_path / "wheelhouse"
    # Parts of 8 KiB: six (~11 KiB) is cut into pieces, the probe (~1.5 KiB) fits in a part.
    built = _wheelhouse(
        out,
        "--requirements",
        tmp_path / "requirements.txt",
        "--project",
        _probe_project(tmp_path / "probe"),
        "--part-mb",
        8 / 1024,
    )
    assert built.returncode == 0, built.stderr
    wheels = {w["wheel"] for w in json.loads((out / "wheelhouse.json").read_text())["wheels"]}
    assert wheels == {"six-1.17.0-py2.py3-none-any.whl", "wm_wheelhouse_probe-0.1.0-py3-none-any.whl"}
    assert (out / "part-001" / "six-1.17.0-py2.py3-none-any.whl.000").exists()
    assert all(f.stat().st_size <= 8 * 1024 for f in out.glob("part-*/*"))

    target = tmp_path / "target"
    venv.EnvBuilder(with_pip=True).create(target)  # pip from the interpreter's bundled copy: no download
    python = str(target / "bin" / "python")
    offline = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_CONFIG_FILE": os.devnull,
    }
    offline.pop("PIP_FIND_LINKS", None)
    installed = subprocess.run(["bash", str(out / "install.sh"), python], capture_output=True, text=True, env=offline)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "installed 2 wheels" in installed.stdout
    imported = subprocess.run(
        [python, "-c", "import wm_wheelhouse_probe; print(wm_wheelhouse_probe.VALUE)"], capture_output=True, text=True
    )
    assert imported.stdout.strip() == "offline ok", imported.stderr

    # A missing part is named before anything is installed.
    (out / "part-002").rename(tmp_path / "elsewhere")
    broken = subprocess.run(["bash", str(out / "install.sh"), python], capture_output=True, text=True, env=offline)
    assert broken.returncode == 1 and "copy every part-NNN folder" in broken.stderr


def test_wheelhouse_of_the_lock_leaves_out_torch_excluded_and_installed_packages(tmp_path):
    freeze = tmp_path / "freeze.txt"
    locked = {
        line.split("==")[0]: line.split("==")[1].split(" ")[0]
        for line in _wheelhouse(tmp_path / "all", "--list").stdout.splitlines()
    }
    assert {"torch", "triton", "lerobot", "numpy", "scipy", "torchvision"} <= set(locked)
    freeze.write_text(f"numpy=={locked['numpy']}\nscipy==0.1\n")  # numpy at the locked version, scipy not
    listed = _wheelhouse(
        tmp_path / "out", "--without-torch", "--exclude", "torchvision", "--installed", freeze, "--list"
    )
    assert listed.returncode == 0, listed.stderr
    names = {line.split("==")[0] for line in listed.stdout.splitlines()}
    assert "lerobot" in names and "scipy" in names and "transformers" in names
    left_out = {"torch", "triton", "torchvision", "numpy"} | {n for n in locked if n.startswith(("nvidia-", "cuda-"))}
    assert not names & left_out and len(left_out) > 10
    assert not (tmp_path / "out").exists()
    refused = _wheelhouse(tmp_path / "x", "--requirements", freeze, "--without-torch")
    assert refused.returncode != 0 and "--without-torch/--exclude prune the lock" in refused.stderr


def test_install_script_refuses_another_python(tmp_path):
    (tmp_path / "requirements.txt").write_text("")
    # The check comes first, so a wheelhouse of nothing is enough to see it.
    built = _wheelhouse(
        tmp_path / "empty",
        "--requirements",
        tmp_path / "requirements.txt",
        "--project",
        _probe_project(tmp_path / "probe"),
    )
    assert built.returncode == 0, built.stderr
    fake = tmp_path / "python2.7"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    refused = subprocess.run(
        ["bash", str(tmp_path / "empty" / "install.sh"), str(fake)], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "is not CPython 3.12 on Linux x86-64" in refused.stderr
    assert sys.version_info[:2] == (3, 12)
