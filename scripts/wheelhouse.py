"""A wheelhouse of the locked environment for a Linux x86-64, Python 3.12 machine without a package registry.

Run through run.sh (which provides uv and pip):

    bash run.sh wheelhouse OUT [--without-torch] [--exclude NAME]... [--installed FREEZE] [--part-mb 60]

and on the target machine, with no registry:

    bash OUT/install.sh [PYTHON]          # PYTHON: default python3; a venv's python installs into that venv

The requirements are the project's lock (``uv export --frozen --no-dev``) for the target's platform;
``--without-torch`` / ``--exclude NAME`` leave a package out together with the dependencies only it needs
(uv's ``--prune``), ``--installed`` leaves out what ``pip list --format=freeze`` on the target shows at the
locked version. Wheels come from the registry for the target's tags (manylinux up to ``--glibc``); the few
locked packages published only as source are built into wheels here. The project's own packages are built
with ``uv build``. The wheels are split into ``part-NNN/`` folders of at most ``--part-mb`` MiB (to carry
them in pieces; a wheel larger than a part is cut into pieces ``NAME.whl.000``, ``.001``, ... in parts of
their own) and listed with their SHA-256 in ``SHA256SUMS``; ``install.sh`` joins the pieces, checks every
wheel is there and intact, then installs them all with ``pip install --no-index --no-deps``: the set is the
lock's complete closure, so nothing is resolved or fetched on the target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.12"

INSTALL_SH = """#!/usr/bin/env bash
# Installs this wheelhouse with no package registry: bash install.sh [PYTHON]
# PYTHON (default python3) must be CPython {python} on Linux x86-64; its environment receives the wheels
# (make a venv first to keep them apart: python3 -m venv --system-site-packages ENV; bash install.sh ENV/bin/python).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${{1:-python3}}
if ! "$py" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == ({major}, {minor}) and platform.system() == "Linux" and platform.machine() == "x86_64"))'; then
    echo "error: $py is not CPython {python} on Linux x86-64, which this wheelhouse was built for" >&2
    exit 1
fi
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
shopt -s nullglob
for wheel in "$here"/part-*/*.whl; do
    ln -s "$wheel" "$wheels/"
done
for first in "$here"/part-*/*.whl.000; do  # a wheel larger than a part: pieces .000, .001, ... in part order
    name=$(basename "$first" .000)
    cat "$here"/part-*/"$name".[0-9][0-9][0-9] >"$wheels/$name"
done
if ! (cd "$wheels" && sha256sum --check --quiet "$here/SHA256SUMS"); then
    echo "error: wheels are missing or damaged (see above); copy every part-NNN folder of the wheelhouse here" >&2
    exit 1
fi
# The wheels are the lock's complete closure: install exactly them, resolving and fetching nothing.
"$py" -m pip install --no-index --no-deps --disable-pip-version-check "$wheels"/*.whl
echo "installed $(ls "$wheels" | wc -l) wheels into $("$py" -c 'import sys; print(sys.prefix)')"
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pinned(line: str) -> tuple[str, str] | None:
    """(normalized name, version) of a ``name==version [; marker]`` requirement line."""
    match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line.strip())
    return (_normalize(match.group(1)), match.group(2)) if match else None


def locked_requirements(prune: list[str]) -> list[str]:
    """The lock's requirement lines (with markers) without the workspace's own packages and ``prune``."""
    cmd = [
        sys.executable,
        "-m",
        "uv",
        "export",
        "--frozen",
        "--no-hashes",
        "--no-dev",
        "--no-emit-workspace",
        "--format",
        "requirements.txt",
        "--quiet",
        "--project",
        str(REPO),
    ]
    for name in prune:
        cmd += ["--prune", name]
    out = _run(cmd, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def installed_versions(freeze: Path) -> dict[str, str]:
    """``pip list --format=freeze`` / ``pip freeze`` output as {normalized name: version}."""
    return dict(p for line in freeze.read_text().splitlines() if (p := _pinned(line)))


def manylinux_platforms(glibc: str) -> list[str]:
    """Platform tags of x86-64 wheels that run on a glibc ``glibc`` machine, newest first."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 5:
        raise SystemExit(f"error: --glibc must be 2.5 or newer, got {glibc}")
    tags = [f"manylinux_2_{m}_x86_64" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014_x86_64", 12: "manylinux2010_x86_64", 5: "manylinux1_x86_64"}
    return tags + [tag for m, tag in legacy.items() if m <= minor]


def download(requirements: list[str], dest: Path, glibc: str) -> None:
    """Wheels for the target (sdists where a package publishes no wheel for it, built here into wheels)."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "requirements.txt"
        listing.write_text("\n".join(requirements) + "\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--prefer-binary",
            "--disable-pip-version-check",
            "--python-version",
            PYTHON_VERSION,
            "--implementation",
            "cp",
            "--abi",
            "cp" + PYTHON_VERSION.replace(".", ""),
            "--dest",
            str(dest),
            "--requirement",
            str(listing),
        ]
        for tag in manylinux_platforms(glibc):
            cmd += ["--platform", tag]
        _run(cmd)
    for sdist in sorted(p for p in dest.iterdir() if not p.name.endswith(".whl")):
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--disable-pip-version-check",
                "--wheel-dir",
                str(dest),
                str(sdist),
            ]
        )
        sdist.unlink()


def build_projects(projects: list[Path], dest: Path) -> None:
    uv = [sys.executable, "-m", "uv", "build", "--wheel", "--quiet", "--out-dir", str(dest)]
    for project in projects:
        _run(uv + ([str(project)] if project != REPO else ["--all-packages", "--project", str(REPO)]))


def pack(wheels: list[Path], part_bytes: float) -> list[list[tuple[Path, int | None]]]:
    """Wheels in parts of at most ``part_bytes`` (largest first, each into the first part it fits). A wheel
    larger than a part is cut into pieces that fill parts of their own, in order: (wheel, piece index)."""
    parts: list[list[tuple[Path, int | None]]] = []
    used: list[int] = []
    for wheel in sorted(wheels, key=lambda w: (-w.stat().st_size, w.name)):
        size = wheel.stat().st_size
        if part_bytes > 0 and size > part_bytes:
            for piece in range(-(-size // int(part_bytes))):
                parts.append([(wheel, piece)])
                used.append(min(part_bytes, size - piece * int(part_bytes)))
            continue
        fit = next((i for i, u in enumerate(used) if part_bytes <= 0 or u + size <= part_bytes), None)
        if fit is None:
            parts.append([])
            used.append(0)
            fit = len(parts) - 1
        parts[fit].append((wheel, None))
        used[fit] += size
    return parts


def build(args: argparse.Namespace) -> None:
    if (platform.system(), platform.machine()) != ("Linux", "x86_64") or sys.version_info[:2] != (3, 12):
        raise SystemExit(
            "error: build the wheelhouse on Linux x86-64 with Python 3.12 (the target's), "
            "so requirement markers and source builds match it: `bash run.sh wheelhouse ...`"
        )
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"error: {out} exists and is not empty; choose a new folder")
    if args.requirements:
        if args.without_torch or args.exclude:
            raise SystemExit("error: --without-torch/--exclude prune the lock; with --requirements, edit the file")
        requirements = [
            line
            for line in Path(args.requirements).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    else:
        requirements = locked_requirements((["torch"] if args.without_torch else []) + args.exclude)
    if args.installed:
        have = installed_versions(Path(args.installed))
        requirements = [line for line in requirements if not ((p := _pinned(line)) and have.get(p[0]) == p[1])]
    if args.list:
        print("\n".join(requirements))
        return

    staging = out.parent / f".{out.name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    download(requirements, staging, args.glibc)
    build_projects([Path(p).resolve() for p in args.project] or [REPO], staging)
    wheels = sorted(staging.glob("*.whl"))
    manifest = [
        {"wheel": w.name, "bytes": w.stat().st_size, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
        for w in wheels
    ]
    part_bytes = int(args.part_mb * 1024**2)
    parts = pack(wheels, part_bytes)
    for number, entries in enumerate(parts, start=1):
        folder = staging / f"part-{number:03d}"
        folder.mkdir()
        for wheel, piece in entries:
            if piece is None:
                wheel.rename(folder / wheel.name)
            else:
                with wheel.open("rb") as f:
                    f.seek(piece * part_bytes)
                    (folder / f"{wheel.name}.{piece:03d}").write_bytes(f.read(part_bytes))
    for wheel in wheels:
        wheel.unlink(missing_ok=True)  # cut into pieces
    sums = [f"{w['sha256']}  {w['wheel']}" for w in manifest]
    (staging / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    major, minor = PYTHON_VERSION.split(".")
    (staging / "install.sh").write_text(INSTALL_SH.format(python=PYTHON_VERSION, major=major, minor=minor))
    (staging / "wheelhouse.json").write_text(
        json.dumps(
            {
                "target": {"python": PYTHON_VERSION, "platforms": manylinux_platforms(args.glibc)},
                "lock_sha256": hashlib.sha256((REPO / "uv.lock").read_bytes()).hexdigest()
                if not args.requirements
                else None,
                "without_torch": args.without_torch,
                "excluded": args.exclude,
                "installed": args.installed,
                "wheels": manifest,
            },
            indent=2,
        )
        + "\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    for folder in sorted(out.glob("part-*")):
        files = list(folder.iterdir())
        print(f"{folder.name}: {len(files)} files, {sum(f.stat().st_size for f in files) / 1024**2:.1f} MiB")
    print(f"wheelhouse written to {out}; on the target machine: bash {out.name}/install.sh [PYTHON]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="new folder for the wheelhouse")
    parser.add_argument(
        "--without-torch",
        action="store_true",
        help="leave out torch and what only it needs (nvidia-*, triton, cuda-*, ...)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="NAME",
        help="leave out NAME and what only it needs (repeatable)",
    )
    parser.add_argument(
        "--installed",
        metavar="FREEZE",
        help="output of `python3 -m pip list --format=freeze` on the target: leave out what it has at the locked version",
    )
    parser.add_argument(
        "--part-mb",
        type=float,
        default=0,
        help="split the wheels into part-NNN folders of at most this many MiB (0: one part)",
    )
    parser.add_argument(
        "--glibc",
        default="2.28",
        help="the target's glibc version (`ldd --version`); wheels for newer glibc are not used",
    )
    parser.add_argument(
        "--requirements", metavar="FILE", help="pinned requirements to use instead of the project's lock"
    )
    parser.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="DIR",
        help="projects to build as wheels (default: this repository's workspace)",
    )
    parser.add_argument("--list", action="store_true", help="print the requirements that would be fetched, and stop")
    build(parser.parse_args())


if __name__ == "__main__":
    main()
