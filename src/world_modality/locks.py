"""One writer per output: every command that writes a folder (or a results file) holds a lock on it while it runs.

The lock of PATH is the file ``.<name>.wm-lock`` beside it (so a folder that appears only when complete, such as
a dataset, has one while it is built), holding its holder's record: host, pid, command line, start time and a
token. A second writer is refused (`WriterLocked`, one paragraph naming the holder) when PATH itself, a folder
above it or anything below it is held by a live process. Holding is an exclusive ``flock`` on that file: the
kernel releases it when its process dies however it dies, so a lock left by a killed process is taken over by
the next writer. A record on another host cannot be checked from here (its process may run, and network file
systems need not share locks): it is refused, and the message says which file to remove once that process is
known to have ended.

Nested writers are not refused: a process's own locks, and those of the processes that started it (their tokens
travel in the environment variable `TOKENS_ENV`, which the executors pass on to processes and Ray tasks), so a
`wm matrix` holding its run folder runs its steps inside it, while a hand-run `wm eval` into one of its evaluation
folders is refused. Each step still locks its own folder, so a step left running by a killed matrix keeps its
folder from a second one. Readers take no lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from lerobot_policy_world_modality.errors import WorldModalityError
from world_modality.atomic_io import UnwritableOutput, writable_output

LOCK_SUFFIX = ".wm-lock"
TOKENS_ENV = "WORLD_MODALITY_WRITER_TOKENS"
# A lock file found held is looked at again for this long before it counts as held: a writer that has just taken
# it writes its record within it, and a process checking it (`_holder_of`) holds it for a moment.
SETTLE_S = 0.5

_guard = threading.RLock()
_held: dict[Path, int] = {}  # lock file -> descriptor holding its flock, in this process


class WriterLocked(WorldModalityError, RuntimeError):
    """Another live process writes the output (or a folder above or below it)."""


@dataclass(frozen=True)
class Holder:
    """The record in a lock file."""

    path: str
    host: str
    pid: int
    command: str
    started: str
    token: str

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, started {self.started})"

    @property
    def elsewhere(self) -> bool:
        return self.host != socket.gethostname()


def lock_file(path: Path) -> Path:
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


@contextmanager
def writer_lock(path: str | Path, folder: bool = True) -> Iterator[Path]:
    """Hold the lock of output ``path`` (a folder, or a file when not ``folder``) for the block; yields it absolute.

    Refuses before any work an output that cannot be written (`UnwritableOutput`) and one another live process
    writes (`WriterLocked`): ``path`` itself, a folder above it or, for a folder, anything in it. Within a lock of
    this process or of one that started it, the block runs as well (the matrix's steps in its run folder)."""
    target = writable_output(path, folder)
    lock = lock_file(target)
    holder = _read(lock)
    if holder is not None and holder.token in _tokens():  # this process, or the one that started it, holds it
        yield target
        return
    fd, token = _acquire(target, lock)
    try:
        _refuse_held_around(target, folder)
    except BaseException:
        _release(lock, fd)
        raise
    with _guard:
        _held[lock] = fd
        _set_tokens([*_tokens(), token])  # processes started from here on write within it
    try:
        yield target
    finally:
        with _guard:
            _set_tokens([t for t in _tokens() if t != token])
            _held.pop(lock, None)
        _release(lock, fd)


def held_tokens() -> str:
    """The tokens of the locks this process holds or runs within, for a task run elsewhere (`within`)."""
    return os.environ.get(TOKENS_ENV, "")


@contextmanager
def within(tokens: str) -> Iterator[None]:
    """Run the block as a step of the process whose `held_tokens` these are (a Ray task of a matrix)."""
    previous = _tokens()
    _set_tokens(list(dict.fromkeys([*previous, *(t for t in tokens.split(",") if t)])))
    try:
        yield
    finally:
        _set_tokens(previous)


def _tokens() -> list[str]:
    return [t for t in os.environ.get(TOKENS_ENV, "").split(",") if t]


def _set_tokens(tokens: list[str]) -> None:
    if tokens:
        os.environ[TOKENS_ENV] = ",".join(tokens)
    else:
        os.environ.pop(TOKENS_ENV, None)


def _acquire(target: Path, lock: Path) -> tuple[int, str]:
    """Take the flock of ``lock`` and write this process's record into it; returns (descriptor, token)."""
    settled = time.monotonic() + SETTLE_S
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UnwritableOutput(e.errno, e.strerror, str(lock.parent)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_fd(fd)
            os.close(fd)
            if time.monotonic() < settled:
                time.sleep(0.02)
                continue
            raise WriterLocked(_refusal(target, holder, lock, certain=True)) from None
        try:
            replaced = not os.path.samestat(os.stat(lock), os.fstat(fd))
        except FileNotFoundError:
            replaced = True
        if replaced:  # its holder removed it while letting go: open the one at that path now
            os.close(fd)
            continue
        previous = _read_fd(fd)
        if previous is not None and previous.elsewhere:  # not held here; there, it may run (cannot tell)
            os.close(fd)
            raise WriterLocked(_refusal(target, previous, lock, certain=False))
        if previous is not None:  # this host's kernel let the lock go: its process ended
            print(
                f"{target}: taking over the lock of {previous.describe()}, which is no longer running", file=sys.stderr
            )
        token = secrets.token_hex(8)
        record = Holder(
            str(target),
            socket.gethostname(),
            os.getpid(),
            _command_line(),
            time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            token,
        )
        try:
            os.ftruncate(fd, 0)
            if os.pwrite(fd, json.dumps(asdict(record)).encode(), 0) == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as e:
            _release(lock, fd)
            raise UnwritableOutput(e.errno, e.strerror, str(lock.parent)) from None
        return fd, token


def _refuse_held_around(target: Path, folder: bool) -> None:
    """Refuse when a process other than this one (or the one that started it) holds a folder above ``target``
    or, for a folder, anything in it."""
    locks = [lock_file(above) for above in target.parents if above.name]
    if folder and target.is_dir():
        locks += [
            Path(root) / name
            for root, _, names in os.walk(target)
            for name in names
            if name.startswith(".") and name.endswith(LOCK_SUFFIX)
        ]
    ours = set(_tokens())
    for lock in locks:
        found = _holder_of(lock)
        if found is not None and (found[0] is None or found[0].token not in ours):
            raise WriterLocked(_refusal(target, *found, lock))


def _holder_of(lock: Path) -> tuple[Holder | None, bool] | None:
    """Who holds lock file ``lock``: None when no process does, else (its record, None if it left none; whether
    it certainly runs: False for a record of another host whose lock is not held here)."""
    settled = time.monotonic() + SETTLE_S
    while True:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            holder = _read_fd(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # let go when the descriptor closes
            except BlockingIOError:
                if holder is None and time.monotonic() < settled:  # taken a moment ago: its record comes next
                    time.sleep(0.02)
                    continue
                return holder, True
            return (holder, False) if holder is not None and holder.elsewhere else None
        finally:
            os.close(fd)


def _refusal(target: Path, holder: Holder | None, lock: Path, certain: bool) -> str:
    if holder is None:
        return (
            f"{target} is locked by a process that left no record in {lock}: end it (`fuser {lock}` names it) "
            "or wait for it, then run the command again."
        )
    held = Path(holder.path)
    where = (
        f"{target} is being written"
        if held == target
        else f"{target} is inside {held}, which is being written"
        if held in target.parents
        else f"{target} holds {held}, which is being written"
    )
    text = (
        f"{where} by another process: {holder.describe()}. One writer at a time: two would record the same "
        "results twice or mix their files. Wait for it to finish or stop it, or write elsewhere."
    )
    if not certain:
        text += (
            " That process runs on another host, so whether it still runs cannot be told from here: once you "
            f"know it does not, remove {lock} and run the command again."
        )
    return text


def _release(lock: Path, fd: int) -> None:
    """Remove the lock file (while still holding it, so that a writer waiting on it opens a fresh one) and let go."""
    try:
        if os.path.samestat(os.stat(lock), os.fstat(fd)):
            os.unlink(lock)
    except FileNotFoundError:
        pass
    os.close(fd)


def _read(lock: Path) -> Holder | None:
    try:
        fd = os.open(lock, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int) -> Holder | None:
    """The record of an open lock file; None when it is empty (being written) or not a record."""
    try:
        return Holder(**json.loads(os.pread(fd, 1 << 16, 0)))
    except (ValueError, TypeError):
        return None


def _command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else sys.executable


def _forget_after_fork() -> None:
    """A forked child does not hold its parent's locks: closing its copies lets them go when the parent dies."""
    for fd in _held.values():
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
