"""What one session owns (``ui.session``) and its private folder (``ui.workdirs``): generation ids numbered
per session, and session folders that never outlive their server."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

import gpt2
from ui import workdirs
from ui.session import MAX_RECORDS, GenerationRecord, Session


def _record() -> GenerationRecord:
    return GenerationRecord([1, 2], gpt2.SamplingParams(), "tiny", False, token_ids=[3])


def test_each_session_numbers_its_own_generations():
    """Ids are 1, 2, 3… in every session: they tell nothing about other users and find none of theirs."""
    a, b = Session("tiny"), Session("tiny")
    kept_a = [_record() for _ in range(3)]
    for r in kept_a:
        a.add_record(r)
    b.add_record(theirs := _record())
    assert [r.id for r in kept_a] == [1, 2, 3] and theirs.id == 1
    assert a.record(2) is kept_a[1] and a.record(None) is kept_a[-1] and b.record(2) is None
    assert kept_a[0].label.startswith("#1 · 1 tokens")


def test_ids_keep_counting_past_the_records_a_session_drops():
    """An id is never reused in a session: a dropped generation's id finds nothing instead of a newer one."""
    session = Session("tiny")
    for _ in range(MAX_RECORDS + 2):
        session.add_record(_record())
    assert [r.id for r in session.records] == list(range(3, MAX_RECORDS + 3))
    assert session.record(1) is None


@pytest.fixture()
def temp_root(tmp_path, monkeypatch):
    """The temporary folder is ``tmp_path`` (session folders go there)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _finished() -> int:
    """The pid of a process that has ended (reaped, so no zombie holds it)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_a_session_folder_is_named_after_its_process_and_goes_with_the_session(temp_root):
    session = Session("tiny")
    folder = session.workdir
    assert folder.parent == temp_root and folder.name.startswith(workdirs.owner_prefix())
    assert f"-{os.getpid()}-" in folder.name
    session.close()
    assert not folder.exists()


@pytest.mark.skipif(os.name != "posix", reason="stale folders are recognised by their pid on POSIX only")
def test_start_removes_folders_of_stopped_servers_and_registers_its_own(temp_root, monkeypatch):
    """Without killing anything: a folder named after an ended process is removed at start-up; this
    process's, another host's and foreign folders stay; this process's own go at its exit."""
    dead = temp_root / f"{workdirs.owner_prefix(_finished())}abc"
    session = Session("tiny")  # a live session of this process (its folder goes when the object does)
    live = session.workdir
    other_host = temp_root / f"{workdirs.PREFIX}elsewhere-{_finished()}-abc"
    foreign = temp_root / "gpt2-playground-notes"
    for folder in (dead, other_host, foreign):
        folder.mkdir()
    (dead / "pasted.txt").write_text("someone's text")
    at_exit = []
    monkeypatch.setattr(workdirs.atexit, "register", at_exit.append)
    workdirs.start.__wrapped__()  # what app.make_context runs once per process
    assert not dead.exists() and live.is_dir() and other_host.is_dir() and foreign.is_dir()
    assert at_exit == [workdirs.remove_own]
    workdirs.remove_own()
    assert not live.exists() and other_host.is_dir() and foreign.is_dir()
