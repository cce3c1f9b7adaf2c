"""Content digests of the files the pipeline writes: recorded when a folder is written, checked when it is read.

A folder written by the pipeline (a checkpoint's ``pretrained_model/`` and ``training_state/``, a generated dataset,
an encoder folder) holds ``file_digests.json``: the size and sha256 of every file in it at the time of writing
(files added later, e.g. latent caches inside a dataset, are not part of it). A latent cache records the digest of
its latents file in its own ``spec.json``. Reading checks sizes first (a truncated file costs no hashing), then
hashes each listed file once. Torch-free: the pipeline and the policies use it alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lerobot_policy_world_modality.errors import InputError

DIGESTS_FILE = "file_digests.json"
DIGEST_ALGORITHM = "sha256"  # with the CPU's SHA extensions, faster than blake2b here
# Set (to any non-empty value) to skip every check: `wm ... --no-verify` sets it; under lerobot-train set it yourself.
NO_VERIFY_ENV = "WORLD_MODALITY_NO_VERIFY"
# Files this process has verified, as (path, size, mtime_ns, digest): a folder read several times per command is
# hashed once, and a file changed since (new size or modification time) is hashed again.
_verified: set[tuple[str, int, int, str]] = set()


class DamagedFileError(InputError):
    """A file differs from what was recorded when it was written (or is missing)."""


def file_digest(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, DIGEST_ALGORITHM).hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """What is recorded of one file: its size and content digest."""
    path = Path(path)
    return {"size": path.stat().st_size, DIGEST_ALGORITHM: file_digest(path)}


def folder_records(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``relative path -> file_record`` of every file under ``folder`` (its digests file aside), sorted."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != DIGESTS_FILE)
    return {p.relative_to(folder).as_posix(): file_record(p) for p in files}


def verification_skipped() -> bool:
    return bool(os.environ.get(NO_VERIFY_ENV))


def verify_files(folder: str | Path, records: dict[str, dict[str, Any]], remedy: str) -> None:
    """Check the files of ``records`` (relative to ``folder``) against their recorded size and digest; a mismatch
    raises `DamagedFileError` naming the file and saying what to do (``remedy``, or skip the check)."""
    if verification_skipped():
        return
    folder = Path(folder)
    for name, record in records.items():
        path = folder / name
        stat = path.stat() if path.is_file() else None
        seen = None if stat is None else (str(path.resolve()), stat.st_size, stat.st_mtime_ns, record[DIGEST_ALGORITHM])
        if seen in _verified:
            continue
        if stat is None:
            problem = "is missing"
        elif stat.st_size != record["size"]:
            problem = (
                f"is damaged: {stat.st_size} bytes, {record['size']} when it was written (truncated or overwritten)"
            )
        elif file_digest(path) != record[DIGEST_ALGORITHM]:
            problem = f"is damaged: its content differs from the {DIGEST_ALGORITHM} recorded when it was written"
        else:
            _verified.add(seen)
            continue
        raise DamagedFileError(
            f"{path} {problem}. {remedy} (or pass --no-verify to use it anyway at your own risk; outside `wm`, "
            f"set {NO_VERIFY_ENV}=1)."
        )


def recorded_files(folder: str | Path) -> dict[str, dict[str, Any]] | None:
    """``relative path -> file_record`` as a folder's ``file_digests.json`` records them; None when it has none
    (written elsewhere), `DamagedFileError` when that file cannot be read."""
    record = Path(folder) / DIGESTS_FILE
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{record} is damaged ({e}).") from None


def verify_folder(folder: str | Path, remedy: str) -> bool:
    """Check a folder against its ``file_digests.json``; returns False when it has none (written elsewhere)."""
    try:
        records = recorded_files(folder)
    except DamagedFileError as e:
        if verification_skipped():
            return True
        raise DamagedFileError(f"{e} {remedy} (or pass --no-verify to skip the check).") from None
    if records is None:
        return False
    verify_files(folder, records, remedy)
    return True
