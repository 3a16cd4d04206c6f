"""Session folders: each session's private temporary folder (pasted text, uploads, the fine-tuned zip, the
Stop flag) is named after the host and the process that made it, ``gpt2-playground-<host>-<pid>-…``.

A session's folder goes when the session closes (``ui.session``) and at interpreter exit (the folder's
own finalizer). What a killed server leaves behind is found by its name: at start-up ``start`` removes
the folders of this host's processes that are gone, and registers ``remove_own`` for this one's exit.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

PREFIX = "gpt2-playground-"
log = logging.getLogger(__name__)


def _host() -> str:
    """This host's name without dashes (they separate the parts of a folder's name) or odd characters."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def owner_prefix(pid: int | None = None) -> str:
    """The name prefix of the session folders of process ``pid`` on this host (None: this process)."""
    return f"{PREFIX}{_host()}-{os.getpid() if pid is None else pid}-"


def new() -> tempfile.TemporaryDirectory:
    """A new private folder for one session, named after this process."""
    return tempfile.TemporaryDirectory(prefix=owner_prefix())


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a reused pid counts as alive: its folders stay)."""
    if os.name != "posix":  # os.kill(pid, 0) sends Ctrl-C on Windows: never guess there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path: Path) -> None:
    # ignore_errors: another user's folder (not ours to remove), or one that is already gone. rmtree never
    # follows a symbolic link named like a session folder.
    shutil.rmtree(path, ignore_errors=True)


def remove_stale(root: str | Path | None = None) -> list[Path]:
    """Remove the session folders under ``root`` (default: the temporary folder) whose process on this
    host is gone; the folders removed."""
    root = Path(root or tempfile.gettempdir())
    owner = re.compile(rf"{re.escape(PREFIX + _host())}-(\d+)-")
    stale = [p for p in root.glob(f"{PREFIX}{_host()}-*")
             if (m := owner.match(p.name)) and p.is_dir() and not _alive(int(m.group(1)))]
    for path in stale:
        _remove(path)
    if stale:
        log.info("removed %d session folders left by stopped servers", len(stale))
    return stale


def remove_own(root: str | Path | None = None) -> None:
    """Remove this process's session folders under ``root`` (default: the temporary folder)."""
    for path in Path(root or tempfile.gettempdir()).glob(f"{owner_prefix()}*"):
        _remove(path)


@functools.cache
def start() -> None:
    """At server start (once per process): remove stale session folders, and this process's at its exit."""
    remove_stale()
    atexit.register(remove_own)
