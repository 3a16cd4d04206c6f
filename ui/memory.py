"""Give freed memory back to the operating system, so a long-running server shrinks again when sessions
expire (glibc; a no-op elsewhere).

glibc keeps freed blocks for reuse, in one heap ("arena") per thread that allocated them, and rarely
returns them: measured with ``benchmarks/load.py``, the server's memory after every session had expired
stayed 10-47% above where it started and grew with traffic. The big, short-lived allocations here are
per-step logits (100-200 kB each) made on Gradio's worker threads.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD = 64 * 1024  # blocks at least this big come from (and go back to) the OS directly
ARENAS = 2  # heaps shared by all threads: fewer half-empty heaps


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc (not musl)
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> None:
    """Serve big blocks with mmap (freed at once), trim heaps eagerly, and cap the arenas. Call it at
    start-up, before threads allocate."""
    libc = _glibc()
    if libc is None:
        return
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, 0), (_M_ARENA_MAX, ARENAS)))
    log.debug("glibc allocator tuned: %s", ok)


def trim() -> None:
    """Return free heap pages to the OS now (after a session's records and adapters were dropped)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
