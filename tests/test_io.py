"""Atomic writes: the final name holds either the old or the whole new content, and no temporary is left behind."""

from __future__ import annotations

import json

import pytest

from dcclip import io


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    io.write_json_atomic(target, {"x": "é"})
    io.write_json_atomic(target, {"x": 2})
    assert json.loads(target.read_text("utf-8")) == {"x": 2}
    io.write_text_atomic(tmp_path / "t.txt", "hello", fsync=True)
    io.write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "t.txt").read_text() == "hello" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _siblings(target) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert _siblings(target) == ["a.txt"]


def test_atomic_dir_replaces_a_directory_whole_or_not_at_all(tmp_path):
    final = tmp_path / "ckpt"
    with io.atomic_dir(final) as staging:
        (staging / "x").write_text("1")
    with pytest.raises(ValueError), io.atomic_dir(final) as staging:
        (staging / "y").write_text("2")
        raise ValueError("broken")
    assert sorted(p.name for p in final.iterdir()) == ["x"]
    with io.atomic_dir(final) as staging:
        (staging / "z").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["z"]
    assert _siblings(final) == ["ckpt"]


def test_replace_dir_puts_the_old_directory_back_when_the_rename_fails(tmp_path, monkeypatch):
    out, staging = tmp_path / "bundle", tmp_path / ".staging"
    out.mkdir()
    (out / "old").write_text("old")
    staging.mkdir()
    real_replace = io.os.replace

    def failing(src, dst):
        if src == staging:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        io.replace_dir(staging, out)
    assert sorted(p.name for p in out.iterdir()) == ["old"]


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "step-00000004"
    dead = tmp_path / ".step-00000004.tmp-999999"  # no such process
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    partial = tmp_path / ".step-00000004.partial-999998"
    partial.write_bytes(b"half")
    alive = tmp_path / ".step-00000004.tmp-1"  # init: a live writer elsewhere keeps its temporary
    alive.mkdir()
    other = tmp_path / ".step-00000008.tmp-999999"  # another final name: not this write's business
    other.mkdir()
    with io.atomic_dir(target) as staging:
        (staging / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".step-00000004.tmp-1",
        ".step-00000008.tmp-999999",
        "step-00000004",
    ]
