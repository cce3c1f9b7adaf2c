"""Atomic writes: a reader sees the old file or folder or the complete new one, never a partial one.

Every file the pipeline writes goes through here: text and JSON (`atomic_write_text` / `atomic_write_json`),
files written by another library to a path we give it (`atomic_path`: safetensors, npz, png, mp4, torch),
whole folders (`temp_folder` + `commit_folder`: datasets, checkpoints, encoder folders; `record_digests` first
records what they hold, so readers can tell a damaged file) and symlinks (`atomic_symlink`). JSONL episode
files are appended line by line (`append_jsonl`), and reading them (`read_jsonl`) tolerates only what an
interrupted append can leave: an unfinished last line.

A write that fails (no space, file too large, permission, ...) raises `WriteError`, one paragraph naming the file
and the cause, whichever library wrote (`writing` translates their errors), and leaves nothing partial that would
count as done. Every output folder a command creates holds `OUTPUT_MARKER`, saying what it is, so that replacing
a folder (`--overwrite`) touches only one this tool wrote.

Torch-free at import (torch only for `save_tensors_atomic`): torch-free tools and short-lived step
processes (`world_modality.schedule`) use the text and JSONL writers without paying torch's import.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from lerobot_policy_world_modality.errors import InputError, WorldModalityError

if TYPE_CHECKING:
    import torch


# --- write failures ----------------------------------------------------------------------------


# What a failed write's errno means, and what to do about it.
_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EFBIG: (
        "file too large (a file-size limit: `ulimit -f`, or the file system's largest file)",
        "raise the limit or write to another file system",
    ),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.EROFS: ("read-only file system", "write to another file system"),
    errno.ENOTDIR: ("a file stands where a folder is expected", "move that file or choose another path"),
    errno.EISDIR: ("a folder stands where a file is expected", "move that folder or choose another path"),
}
# How libraries that do not raise OSError report one: Rust's io::Error (safetensors) and "[Errno N]" texts.
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")


class WriteError(WorldModalityError, OSError):
    """Writing ``filename`` failed: one paragraph naming the file, the cause and what to do. What was complete
    before is kept; the failed part counts as not done, so running the command again continues exactly."""

    def __str__(self) -> str:
        cause, remedy = _CAUSES.get(self.errno, (self.strerror or "unknown error", "fix the cause"))
        return (
            f"could not write {self.filename}: {cause} ({errno.errorcode.get(self.errno, self.errno)}). What was "
            f"complete before it is kept and nothing after it counts as done: {remedy}, then run the same "
            "command again to continue."
        )


class UnwritableOutput(WriteError):
    """An output the command would write to cannot be written: refused before any work."""

    def __str__(self) -> str:
        cause, remedy = _CAUSES.get(self.errno, (self.strerror or "unknown error", "fix the cause"))
        return (
            f"cannot write to {self.filename}: {cause} ({errno.errorcode.get(self.errno, self.errno)}); nothing "
            f"was done. Choose another output, or {remedy}."
        )


def write_errno(error: BaseException) -> int | None:
    """The errno of a failed write, however the writing library reported it (None: not a write failure)."""
    if isinstance(error, OSError) and error.errno is not None:
        return error.errno
    if isinstance(error, Exception) and (match := _ERRNO_IN_TEXT.search(str(error))):
        return int(match[1] or match[2])
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write inside the block (an OSError, or a library's error carrying an errno) into a
    `WriteError` naming ``path``; other errors pass unchanged."""
    try:
        yield
    except WriteError:
        raise
    except Exception as e:
        code = write_errno(e)
        if code is None:
            raise
        raise WriteError(code, os.strerror(code), str(path)) from e


def writable_output(path: str | Path, folder: bool = True) -> Path:
    """Refuse (`UnwritableOutput`) an output this process cannot write, before any work: an existing ``path`` must
    be a writable folder (``folder``) or file, and a new one needs a writable parent (created if missing), where
    it and its temporary and lock files go. Returns ``path``, absolute."""
    path = Path(path).expanduser().resolve()
    where = path
    try:
        if path.exists():
            if path.is_dir() != folder:
                code = errno.ENOTDIR if folder else errno.EISDIR
                raise OSError(code, os.strerror(code), str(path))
            if folder:
                _probe(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        where = path.parent
        where.mkdir(parents=True, exist_ok=True)
        _probe(where)
    except FileExistsError:  # a file where a folder must be
        raise UnwritableOutput(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(where)) from None
    except OSError as e:
        raise UnwritableOutput(e.errno, e.strerror, str(where)) from None
    return path


def _probe(folder: Path) -> None:
    """Create and remove a file in ``folder`` (permission bits alone do not tell: root, ACLs, read-only mounts)."""
    fd, name = tempfile.mkstemp(dir=folder, prefix=".wm-write-probe-")
    os.close(fd)
    os.unlink(name)


# --- the marker of the folders this tool writes --------------------------------------------------------

OUTPUT_MARKER = ".world_modality_output"


def mark_output(folder: str | Path, kind: str) -> None:
    """Record in ``folder`` that this tool wrote it and what it is (``kind``, e.g. "dataset"): only such a folder
    is ever replaced as a whole. The content is the same for every folder of a kind (exports compare folders)."""
    atomic_write_json(Path(folder) / OUTPUT_MARKER, {"kind": kind, "written_by": "world-modality-vla"})


def output_folder(path: str | Path, kind: str) -> Path:
    """Create output folder ``path`` (and its parents) if missing, marking it as a ``kind`` this tool wrote;
    an existing folder is left as it is. Returns ``path``."""
    path = Path(path)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the folder must be
        raise UnwritableOutput(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
    except OSError as e:
        raise UnwritableOutput(e.errno, e.strerror, str(path)) from None
    if created:
        mark_output(path, kind)
    return path


def output_kind(folder: str | Path) -> str | None:
    """What this tool wrote ``folder`` as (its `OUTPUT_MARKER`), None when the folder holds no marker."""
    try:
        return json.loads((Path(folder) / OUTPUT_MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


# --- atomic files and folders ----------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary name beside ``path`` for a library to write to; when the block ends without error the file is
    fsynced and renamed onto ``path``, else removed (a failed write raises `WriteError` naming ``path``).
    ``suffix`` keeps an extension a writer needs (e.g. ".mp4")."""
    path = Path(path)
    with writing(path):
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
    with writing(link):
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        os.replace(tmp, link)


def temp_folder(final: str | Path) -> Path:
    """A path beside ``final`` to build it in, not existing yet (what an interrupted earlier build left there is
    removed; its parent exists); `commit_folder` then moves it into place."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(final):
        tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def commit_folder(tmp: str | Path, final: str | Path) -> Path:
    """Move a folder built by `temp_folder` into place: its files are fsynced, an existing ``final`` (a rerun of
    the same step) is replaced, and ``final`` appears complete or not at all."""
    tmp, final = Path(tmp), Path(final)
    with writing(final):
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


class JsonlError(InputError):
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
    """Append one JSON line on an ``O_APPEND`` descriptor, then fsync.

    A crash leaves either the whole line or an unfinished last line without its newline; the next append cuts
    that one first (with a note on stderr), so it is never glued to the next record. A write that fails, or
    writes only part of the line (a full disk, a file-size limit), is cut back to the file's previous end and
    raises `WriteError`: the record counts as not written.
    """
    path = Path(path)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if drop_torn_last_line(path):
            print(f"{path}: dropped an unfinished last line left by an interrupted write", file=sys.stderr)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                with suppress(OSError):  # what stays (the file cannot shrink) is cut by the next append
                    os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: a write may write part and return its count without raising."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


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
