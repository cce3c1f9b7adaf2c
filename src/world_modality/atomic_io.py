"""Atomic writes: a reader sees the old file or folder or the complete new one, never a partial one.

Every file the pipeline writes goes through here: text and JSON (`atomic_write_text` / `atomic_write_json`),
files written by another library to a path we give it (`atomic_path`: safetensors, npz, png, mp4, torch),
whole folders (`temp_folder` + `commit_folder`: datasets, checkpoints, encoder folders; `record_digests` first
records what they hold, so readers can tell a damaged file) and symlinks (`atomic_symlink`). JSONL episode
files are appended line by line (`append_jsonl`), and reading them (`read_jsonl`) tolerates only what an
interrupted append can leave: an unfinished last line.

Torch-free at import (torch only for `save_tensors_atomic`): torch-free tools and short-lived step
processes (`world_modality.schedule`) use the text and JSONL writers without paying torch's import.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` for a library to write to; when the block ends without error the file is
    fsynced and renamed onto ``path``, else removed. ``suffix`` keeps an extension a writer needs (e.g. ".mp4")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temporary name only
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file (with string metadata) so readers never see a partial one."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def atomic_symlink(link: str | Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative to the link's folder) in one rename."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def temp_folder(final: str | Path) -> Path:
    """A path beside ``final`` to build it in, not existing yet (what an interrupted earlier build left there is
    removed; its parent exists); `commit_folder` then moves it into place."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def commit_folder(tmp: str | Path, final: str | Path) -> Path:
    """Move a folder built by `temp_folder` into place: its files are fsynced, an existing ``final`` (a rerun of
    the same step) is replaced, and ``final`` appears complete or not at all."""
    tmp, final = Path(tmp), Path(final)
    for path in tmp.rglob("*"):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def record_digests(folder: str | Path) -> None:
    """Record the size and digest of every file of a folder being built (before `commit_folder`), so readers can
    tell a damaged file (`lerobot_policy_world_modality.file_digests.verify_folder`)."""
    # Imported here: the plugin package's import pulls in LeRobot, and this module stays light at import.
    from lerobot_policy_world_modality.file_digests import DIGEST_ALGORITHM, DIGESTS_FILE, folder_records

    folder = Path(folder)
    atomic_write_json(folder / DIGESTS_FILE, {"algorithm": DIGEST_ALGORITHM, "files": folder_records(folder)})


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- JSONL files -----------------------------------------------------------------------------


class JsonlError(ValueError):
    """A JSONL file has a damaged line that is not an unfinished last line."""


def drop_torn_last_line(path: str | Path) -> bool:
    """Cut an unterminated last line (left by an interrupted append) so the next append starts a fresh line;
    returns whether something was cut."""
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0 or os.pread(f.fileno(), 1, end - 1) == b"\n":
            return False
        keep, pos = 0, end
        while pos > 0:  # backwards, block by block, to the last newline
            start = max(0, pos - (1 << 16))
            newline = os.pread(f.fileno(), pos - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor, then fsync.

    A crash leaves either the whole line or an unfinished last line without its newline; the next append cuts
    that one first (with a note on stderr), so it is never glued to the next record.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if drop_torn_last_line(path):
        print(f"{path}: dropped an unfinished last line left by an interrupted write", file=sys.stderr)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line number, decoded value) of every complete line of a file written by `append_jsonl`. An unterminated
    last line is an unfinished append and is skipped; any other line that is not JSON raises `JsonlError`
    naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise JsonlError(
                f"{path}:{number}: not valid JSON ({reason}). Only an unfinished last line can come from an "
                "interrupted write, so this file was damaged or edited: restore it, or remove that line (its "
                "record is then redone or missing)"
            ) from None


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSONL file written by :func:`append_jsonl` (none when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [record for _, record in jsonl_lines(path)]
