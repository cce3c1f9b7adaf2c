"""Atomic writes and JSONL episode files: nothing partial is ever read, no record is lost or glued."""

from __future__ import annotations

import errno
import json
import os

import pytest

from world_modality.atomic_io import (
    JsonlError,
    UnwritableOutput,
    WriteError,
    append_jsonl,
    atomic_path,
    atomic_symlink,
    atomic_write_json,
    commit_folder,
    drop_torn_last_line,
    output_folder,
    output_kind,
    read_jsonl,
    temp_folder,
    write_errno,
    writing,
)


def test_a_torn_last_line_is_skipped_then_cut_before_the_next_append(tmp_path, capsys):
    path = tmp_path / "episodes.jsonl"
    append_jsonl(path, {"episode_id": "a", "success": True})
    with open(path, "ab") as f:  # what a write killed halfway leaves: no newline
        f.write(b'{"episode_id": "b", "succ')
    assert read_jsonl(path) == [{"episode_id": "a", "success": True}]
    append_jsonl(path, {"episode_id": "b", "success": False})
    assert "dropped an unfinished last line" in capsys.readouterr().err
    assert read_jsonl(path) == [{"episode_id": "a", "success": True}, {"episode_id": "b", "success": False}]
    assert path.read_bytes().count(b"\n") == 2  # nothing glued onto the new record


def test_an_unterminated_last_line_is_unfinished_even_when_it_parses(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}')
    assert read_jsonl(path) == [{"a": 1}]
    assert drop_torn_last_line(path) and path.read_bytes() == b'{"a": 1}\n'
    assert not drop_torn_last_line(path)
    path.write_bytes(b'{"a": ' + b"9" * 200_000)  # a torn first line longer than one read block
    assert drop_torn_last_line(path) and path.read_bytes() == b""


@pytest.mark.parametrize(
    "content, line",
    [
        (b'{"a": 1}\n{"a": 2\n{"a": 3}\n', 2),  # a damaged line in the middle
        (b'{"a": 1}\n{"a": \xff}\n', 2),  # flipped bits: not UTF-8
        (b'{"a": 1}\nnot json\n', 2),  # a complete (terminated) last line is not an unfinished append
    ],
)
def test_a_damaged_complete_line_is_an_error_naming_file_and_line(tmp_path, content, line):
    path = tmp_path / "episodes.jsonl"
    path.write_bytes(content)
    with pytest.raises(JsonlError, match=rf"episodes\.jsonl:{line}: not valid JSON .*restore it, or remove that line"):
        read_jsonl(path)


def test_atomic_path_replaces_whole_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # the temporary file is gone
    with atomic_path(tmp_path / "v.mp4", suffix=".mp4") as tmp:
        assert tmp.suffix == ".mp4"
        tmp.write_bytes(b"x")
    assert (tmp_path / "v.mp4").read_bytes() == b"x" and oct((tmp_path / "v.mp4").stat().st_mode & 0o777) == "0o644"


def test_folders_appear_complete_and_leftovers_are_cleared(tmp_path):
    final = tmp_path / "ckpt"
    tmp = temp_folder(final)
    tmp.mkdir()
    (tmp / "half").write_text("left by a killed run")
    tmp = temp_folder(final)  # a rerun starts clean
    assert not tmp.exists() and tmp.parent == tmp_path
    tmp.mkdir()
    (tmp / "w").write_text("new")
    final.mkdir()
    (final / "old").write_text("old")
    commit_folder(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["w"] and not tmp.exists()
    atomic_symlink(tmp_path / "last", "ckpt")
    atomic_symlink(tmp_path / "last", "ckpt2")
    assert os.readlink(tmp_path / "last") == "ckpt2"


def test_an_append_that_writes_part_of_its_line_leaves_no_partial_line_and_raises(tmp_path, monkeypatch):
    """A write may write part of its data and return its count without error (a full disk, a file-size limit):
    the rest is written, and when that fails the part is cut away and the record counts as not written."""
    path = tmp_path / "episodes.jsonl"
    append_jsonl(path, {"episode_id": "a"})
    before = path.read_bytes()
    real_write, calls = os.write, []

    def write_part_then_fail(fd: int, data) -> int:  # as the kernel does on a disk that fills up
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write_part_then_fail)
    with pytest.raises(WriteError) as failure:
        append_jsonl(path, {"episode_id": "b"})
    monkeypatch.undo()
    assert len(calls) == 2 and calls[1] == calls[0] - 5  # the rest was tried before giving up
    assert path.read_bytes() == before and read_jsonl(path) == [{"episode_id": "a"}]
    assert str(failure.value) == (
        f"could not write {path}: no space left on the device (ENOSPC). What was complete "
        "before it is kept and nothing after it counts as done: free space, then run the "
        "same command again to continue."
    )
    append_jsonl(path, {"episode_id": "b"})  # once there is room, as if it had never failed
    assert read_jsonl(path) == [{"episode_id": "a"}, {"episode_id": "b"}]


def test_write_failures_of_any_writer_name_the_file_and_the_cause(tmp_path):
    """A library that reports the OS error in its own exception (safetensors, in Rust: "... (os error 27)") ends in
    `WriteError` as our own writes do; here a real one, past a file-size limit (`ulimit -f`; Python ignores SIGXFSZ)."""
    import resource

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(WriteError, match=r"could not write .*weights: file too large .*\(EFBIG\)"):
            with writing(tmp_path / "weights"):
                save_file({"z": torch.zeros(1000)}, tmp_path / "weights")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    # The message a full disk gives (seen on a full tmpfs), and one without an OS error, which is not a write failure.
    assert (
        write_errno(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
        == errno.ENOSPC
    )
    assert write_errno(SafetensorError("Error while deserializing header: HeaderTooLarge")) is None
    with pytest.raises(ValueError, match="not a write failure"), writing(tmp_path / "x"):
        raise ValueError("not a write failure")  # anything else passes unchanged


def test_an_output_folder_is_marked_only_when_this_tool_creates_it(tmp_path):
    assert output_folder(tmp_path / "new", "evaluation") == tmp_path / "new"
    assert output_kind(tmp_path / "new") == "evaluation"
    (tmp_path / "theirs").mkdir()
    output_folder(tmp_path / "theirs", "evaluation")
    assert output_kind(tmp_path / "theirs") is None and output_kind(tmp_path / "missing") is None
    (tmp_path / "file").write_text("")
    for where in (tmp_path / "file", tmp_path / "file" / "out"):
        with pytest.raises(
            UnwritableOutput, match=f"cannot write to {where}: a file stands where a folder is expected"
        ):
            output_folder(where, "evaluation")
