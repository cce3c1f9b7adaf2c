"""Atomic writes and JSONL episode files: nothing partial is ever read, no record is lost or glued."""

from __future__ import annotations

import json
import os

import pytest

from world_modality.atomic_io import (
    JsonlError,
    append_jsonl,
    atomic_path,
    atomic_symlink,
    atomic_write_json,
    commit_folder,
    drop_torn_last_line,
    read_jsonl,
    temp_folder,
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


@pytest.mark.parametrize("content, line", [
    (b'{"a": 1}\n{"a": 2\n{"a": 3}\n', 2),  # a damaged line in the middle
    (b'{"a": 1}\n{"a": \xff}\n', 2),  # flipped bits: not UTF-8
    (b'{"a": 1}\nnot json\n', 2),  # a complete (terminated) last line is not an unfinished append
])
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
