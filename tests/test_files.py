"""gpt2.files: atomic file and directory writes (checkpoints themselves: test_weights.py)."""

from __future__ import annotations

import os
import time

import pytest

from gpt2.files import STALE_TEMP_S, restore_interrupted_save, write_dir_atomically, write_file_atomically


def test_file_from_text_bytes_or_a_writer(tmp_path):
    path = tmp_path / "sub" / "log.json"
    assert write_file_atomically(path, "é\n") == path and path.read_text(encoding="utf-8") == "é\n"
    write_file_atomically(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_file_atomically(path, lambda tmp: tmp.write_text("from a writer"))
    assert path.read_text() == "from a writer"
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["log.json"]  # no temporaries left


def test_failed_file_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "plot.html"
    path.write_text("old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(path, fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.html"]


def test_stale_temporary_files_are_removed(tmp_path):
    """A killed write leaves ``.NAME.tmp-*``; the next write of NAME removes it once it is an hour old."""
    old, fresh, other = tmp_path / ".a.txt.tmp-old", tmp_path / ".a.txt.tmp-fresh", tmp_path / ".b.txt.tmp-old"
    for p in (old, fresh, other):
        p.write_text("partial")
    then = time.time() - STALE_TEMP_S - 60
    for p in (old, other):
        os.utime(p, (then, then))
    write_file_atomically(tmp_path / "a.txt", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.txt.tmp-fresh", ".b.txt.tmp-old", "a.txt"]


def test_directory_replace_leaves_nothing_aside(tmp_path):
    dest = tmp_path / "adapter"
    write_dir_atomically(dest, lambda tmp: (tmp / "a").write_text("1"))
    write_dir_atomically(dest, lambda tmp: (tmp / "b").write_text("2"))
    assert [p.name for p in dest.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_keep_existing_directory(tmp_path):
    """A cache entry written meanwhile by another process wins; ours is dropped."""
    dest = tmp_path / "entry"

    def write(tmp):
        (tmp / "mine").write_text("x")
        if not dest.exists():  # another process finishes first, while we are still writing
            dest.mkdir()
            (dest / "theirs").write_text("y")

    assert write_dir_atomically(dest, write, keep_existing=True) == dest
    assert [p.name for p in dest.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    fresh = tmp_path / "new"
    write_dir_atomically(fresh, lambda tmp: (tmp / "mine").write_text("x"), keep_existing=True)
    assert [p.name for p in fresh.iterdir()] == ["mine"]


def test_restore_puts_back_any_directory_set_aside(tmp_path):
    """A save killed between its two renames leaves only ``.NAME.old-PID``: put back, newest first."""
    for pid, content in (("1", "older"), ("2", "newer")):
        aside = tmp_path / f".adapter.old-{pid}"
        aside.mkdir()
        (aside / "adapter_config.json").write_text(content)
    os.utime(tmp_path / ".adapter.old-1", (time.time() - 60,) * 2)
    assert restore_interrupted_save(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").read_text() == "newer"
    assert not restore_interrupted_save(tmp_path / "adapter")  # it exists now: nothing to do
