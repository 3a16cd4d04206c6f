"""Atomic writes: a file or a directory appears complete under its name, or not at all.

Both write into a temporary sibling (same directory, so same filesystem) and rename it into place.
A process killed mid-write leaves only the temporary behind, never a half-written result.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

STALE_TEMP_S = 3600  # a save's temporary directory untouched this long is abandoned, whoever wrote it
_WRITER_FILE = ".writer.json"  # inside a temporary directory while it is written: {"host", "pid"}


def write_file_atomically(path: str | Path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, UTF-8 text, or a function writing to the path it is given) to ``path``.

    The content goes to a temporary ``.NAME.tmp-*`` beside ``path``, is flushed to disk (fsync) and then
    renamed over ``path``: readers see the old file or the new one, never a mix. Temporaries of killed
    writes are removed once untouched for ``STALE_TEMP_S``.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent)
    os.close(fd)  # written by path below: a writer function takes a path
    tmp = Path(name)
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # the content is on disk before the name points at it
        os.chmod(tmp, 0o644)  # mkstemp makes it private; what we write is meant to be read
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_dir_atomically(dest: str | Path, write: Callable[[Path], None], *, keep_existing: bool = False) -> Path:
    """Call ``write(tmp)`` on a new sibling directory ``.NAME.tmp-*``, then rename it over ``dest``.

    ``keep_existing``: a ``dest`` that exists by then wins and ``tmp`` is dropped (for caches, whose
    entries are named by their content: another process wrote the same thing first).

    A process killed mid-write leaves that temporary directory behind; each call first removes the stale
    ones of the same target (``_remove_stale_temps``: their writer, recorded inside while it writes, is a
    process of this machine that no longer runs, or they are untouched for ``STALE_TEMP_S``), and puts
    back a ``dest`` that a call killed mid-swap had set aside (``restore_interrupted_save``).
    """
    dest = Path(dest).expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_save(dest)
    _remove_stale_temps(dest)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), dir=dest.parent))
    try:
        (tmp / _WRITER_FILE).write_text(json.dumps(_writer()))
        write(tmp)
        (tmp / _WRITER_FILE).unlink(missing_ok=True)  # bookkeeping, not part of the result (a nested save
        # into ``tmp`` swaps the directory and may have dropped it already)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        if keep_existing:
            _rename_unless_exists(tmp, dest)
        else:
            _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _temp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def _writer() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_running(pid: int) -> bool:
    """Whether a process with this id exists on this machine (POSIX; elsewhere: assume it does)."""
    if os.name != "posix":  # on Windows os.kill(pid, 0) would send CTRL_C_EVENT, not probe the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, as another user's process
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a directory and its direct entries (a save writes into it)."""
    times = [path.stat().st_mtime]
    for entry in path.iterdir():
        with contextlib.suppress(OSError):  # removed meanwhile
            times.append(entry.stat().st_mtime)
    return max(times)


def _is_stale(tmp: Path, now: float) -> bool:
    """A temporary file or directory another save left behind: untouched for ``STALE_TEMP_S``, or (a
    directory) written by a process of this machine that has exited. A directory on a shared disk written
    from another host only goes by age: its PID means nothing here."""
    try:
        if not tmp.is_dir():
            return now - tmp.stat().st_mtime > STALE_TEMP_S
        if now - _newest_mtime(tmp) > STALE_TEMP_S:
            return True
        writer = json.loads((tmp / _WRITER_FILE).read_text())
        return writer["host"] == socket.gethostname() and not _pid_running(int(writer["pid"]))
    except (OSError, ValueError, KeyError, TypeError):  # no (or a half-written) record: only age counts
        return False


def _remove_stale_temps(out: Path) -> None:
    """Remove ``out``'s stale temporary siblings (``.NAME.tmp-*``) left by killed saves."""
    now = time.time()
    for tmp in out.parent.glob(f"{glob.escape(_temp_prefix(out))}*"):
        if tmp.is_symlink() or not _is_stale(tmp, now):
            continue
        log.info("removing %s, left behind by an interrupted save", tmp)
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _aside_prefix(out: Path) -> str:
    return f".{out.name}.old-"


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``. An existing ``dst`` is renamed aside (``.NAME.old-PID``) first and removed
    after. A process killed between those two renames leaves no ``dst``, only the complete old directory
    aside, which ``restore_interrupted_save`` puts back (saving and loading ``dst`` call it). The aside is
    renamed to a temporary name before it is deleted, so an aside is never a half-deleted directory."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f"{_aside_prefix(dst)}{os.getpid()}")
    os.replace(dst, old)
    os.replace(src, dst)
    trash = dst.with_name(f"{_temp_prefix(dst)}old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(old, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _rename_unless_exists(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, or remove ``src`` if ``dst`` already exists (renaming a directory onto a
    non-empty one fails, so an existing ``dst`` is never touched)."""
    try:
        os.rename(src, dst)
    except OSError:
        if not dst.exists():
            raise
        shutil.rmtree(src, ignore_errors=True)


def restore_interrupted_save(out: str | Path) -> bool:
    """If ``out`` is missing because a save was killed mid-swap, rename the directory it had set aside
    (the newest ``.NAME.old-*``) back to ``out``. Returns whether it did."""
    out = Path(out)
    if out.exists() or not out.parent.is_dir():
        return False
    asides = [p for p in out.parent.glob(f"{glob.escape(_aside_prefix(out))}*") if p.is_dir()]
    for old in sorted(asides, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            os.replace(old, out)
        except OSError:  # another process got there first
            continue
        log.warning("restored %s, set aside by a save that did not finish", out)
        return True
    return False
