"""Server-wide memory budgets for the heavy per-session data, least recently used first out.

A session's light data (its records' text, tokens and settings) stays for the session's life. The heavy
parts are held under budgets shared by every session, so abandoned sessions (an API client never closes
a page) cannot pile them up:

- **Kept logits** (``LOGITS``): a record's per-step raw logits (fp16, vocabulary-sized, per generated
  token: 25.7 MB for 256 tokens of GPT-2) count against ``GPT2_LOGITS_BUDGET_MB`` across all sessions.
  When a new record goes over it, the least recently used records (made or read) lose theirs; the
  Probabilities tab recomputes a dropped step's logits on demand, with a note.
- **Full fine-tuned copies** (``FULL_COPIES``): at most ``GPT2_MAX_FULL_COPIES`` sessions hold one (about
  0.5 GB each for a 124M model). A new one drops the least recently used session's copy; that session is
  told so the next time it asks for it (``Session.dropped_note``). LoRA adapters are small and stay.
- **Redraw caches** (``REDRAW``): a session's queries and keys of the text it last drew in the Attention
  tab (``ui.redraw``: 75 MB for 1,024 tokens of GPT-2 124M) count against ``GPT2_REDRAW_BUDGET_MB`` across
  all sessions. A new entry drops the least recently used sessions' entries while over it; their next
  redraw runs the model again (and keeps the result again).
- **Downloads** (``DOWNLOADS``): a packed .zip is removed ``GPT2_DOWNLOAD_TTL`` seconds after it was last
  asked for (Gradio has served its own copy by then); asking again packs it again.

The limits come from the server's ``Caps`` (``configure``, called by ``AppContext``; the environment
variables are read there). Entries are weak references: a closed or evicted session (or a record it no
longer keeps) frees its share with no call here. Everything is thread-safe (handlers run in Gradio's worker threads).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

DEFAULT_LOGITS_MB = 200
DEFAULT_FULL_COPIES = 2
DEFAULT_DOWNLOAD_TTL_S = 300
DEFAULT_REDRAW_MB = 400


def record_logit_bytes(record: Any) -> int:
    """Bytes of the per-step logits ``record`` still holds."""
    return sum(d.logits.nbytes for d in record.steps if getattr(d, "logits", None) is not None)


def drop_logits(record: Any) -> None:
    for d in record.steps:
        d.logits = None


class LogitBudget:
    """Records holding per-step logits, least recently used first; at most ``limit_bytes`` of logits in
    all (the most recently used record keeps its own even when it alone is over)."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self.limit_bytes = DEFAULT_LOGITS_MB * 1_000_000 if limit_bytes is None else limit_bytes
        self._lock = threading.RLock()  # re-entrant: a weakref callback may run inside a locked section
        self._entries: OrderedDict[int, tuple[weakref.ref, int]] = OrderedDict()  # id -> (record, bytes)

    def _forget(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def add(self, record: Any) -> None:
        """A record was made (its logits counted now), or read: it becomes the most recently used; the
        least recently used records lose their logits while the total is over the limit."""
        with self._lock:
            key = id(record)
            entry = self._entries.get(key)
            if entry is not None and entry[0]() is record:
                self._entries.move_to_end(key)
            else:
                size = record_logit_bytes(record)
                if not size:
                    return
                ref = weakref.ref(record, lambda r, key=key: self._forget(key, r))
                self._entries[key] = (ref, size)
            self._evict()

    touch = add  # reading a record counts as using it (only records still holding logits are tracked)

    def _evict(self) -> None:
        total = sum(size for _, size in self._entries.values())
        while total > self.limit_bytes and len(self._entries) > 1:
            _, (ref, size) = self._entries.popitem(last=False)
            total -= size
            record = ref()
            if record is not None:
                drop_logits(record)

    def dropped(self, record: Any) -> None:
        """``record``'s logits were freed elsewhere (the per-session rule, a closed session)."""
        with self._lock:
            entry = self._entries.get(id(record))
            if entry is not None and entry[0]() is record:
                del self._entries[id(record)]

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(size for ref, size in self._entries.values() if ref() is not None)

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref, _ in self._entries.values() if ref() is not None)


def full_copy_note(limit: int) -> str:
    return (f"Your full fine-tuned model was dropped to make room (this server keeps at most {limit} full "
            "fine-tuned copies, for all users). This session now uses the base model: fine-tune again, or "
            "use LoRA, whose adapters are small and are kept.")


class FullCopies:
    """Sessions holding a full fine-tuned copy, least recently used first; at most ``limit``."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = DEFAULT_FULL_COPIES if limit is None else limit
        self._lock = threading.RLock()
        self._entries: OrderedDict[int, weakref.ref] = OrderedDict()  # id(session) -> session

    def _forget(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            if self._entries.get(key) is ref:
                del self._entries[key]

    def _live(self, session: Any) -> bool:
        ref = self._entries.get(id(session))
        return ref is not None and ref() is session

    def add(self, session: Any) -> None:
        """``session`` now holds a full copy (most recently used); the least recently used other sessions
        lose theirs while more than ``limit`` are held."""
        with self._lock:
            key = id(session)
            if self._live(session):
                self._entries.move_to_end(key)
            else:
                self._entries[key] = weakref.ref(session, lambda r, key=key: self._forget(key, r))
            while len(self._entries) > max(1, self.limit):
                _, ref = self._entries.popitem(last=False)
                other = ref()
                if other is not None and other.finetuned_model is not None:
                    other.finetuned_model = None
                    other.dropped_note = full_copy_note(self.limit)

    def touch(self, session: Any) -> None:
        with self._lock:
            if self._live(session):
                self._entries.move_to_end(id(session))

    def remove(self, session: Any) -> None:
        with self._lock:
            if self._live(session):
                del self._entries[id(session)]

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref in self._entries.values() if ref() is not None)


class RedrawBudget:
    """Sessions' redraw caches (``ui.redraw.RedrawCache``: one entry each), least recently used first; at
    most ``limit_bytes`` in all. Each is counted with the token of the entry it holds, so dropping one
    never frees a newer entry than the one counted."""

    def __init__(self, limit_bytes: int | None = None) -> None:
        self.limit_bytes = DEFAULT_REDRAW_MB * 1_000_000 if limit_bytes is None else limit_bytes
        self._lock = threading.RLock()  # re-entrant: a weakref callback may run inside a locked section
        # id(cache) -> (cache, bytes, token of its entry)
        self._entries: OrderedDict[int, tuple[weakref.ref, int, object]] = OrderedDict()

    def _forget(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] is ref:
                del self._entries[key]

    def _live(self, cache: Any) -> weakref.ref | None:
        entry = self._entries.get(id(cache))
        return entry[0] if entry is not None and entry[0]() is cache else None

    def add(self, cache: Any, size: int, token: object) -> None:
        """``cache`` now holds ``size`` bytes (its entry ``token``), as the most recently used; the least
        recently used caches drop theirs while the total is over the limit."""
        with self._lock:
            key = id(cache)
            ref = self._live(cache) or weakref.ref(cache, lambda r, key=key: self._forget(key, r))
            self._entries[key] = (ref, size, token)
            self._entries.move_to_end(key)
            total = sum(size for _, size, _ in self._entries.values())
            while total > self.limit_bytes and self._entries:
                _, (old, old_size, old_token) = self._entries.popitem(last=False)
                total -= old_size
                if (dropped := old()) is not None:
                    dropped.drop(old_token)

    def touch(self, cache: Any) -> None:
        """``cache`` was read: it becomes the most recently used."""
        with self._lock:
            if self._live(cache) is not None:
                self._entries.move_to_end(id(cache))

    def remove(self, cache: Any) -> None:
        """``cache`` freed its entry (its session closed)."""
        with self._lock:
            if self._live(cache) is not None:
                del self._entries[id(cache)]

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(size for ref, size, _ in self._entries.values() if ref() is not None)

    def __len__(self) -> int:
        with self._lock:
            return sum(1 for ref, _, _ in self._entries.values() if ref() is not None)


class Downloads:
    """Packed downloads, each removed ``ttl_s`` after it was last asked for."""

    def __init__(self, ttl_s: float | None = None) -> None:
        self.ttl_s = float(DEFAULT_DOWNLOAD_TTL_S if ttl_s is None else ttl_s)
        self._lock = threading.Lock()
        self._due: dict[Path, object] = {}  # path -> the token of its latest timer

    def keep(self, path: Path, ttl_s: float | None = None) -> None:
        """Remove ``path`` in ``ttl_s`` seconds (default ``GPT2_DOWNLOAD_TTL``), unless asked for again."""
        token = object()
        with self._lock:
            self._due[path] = token
        timer = threading.Timer(self.ttl_s if ttl_s is None else ttl_s, self._expire, (path, token))
        timer.daemon = True
        timer.start()

    def _expire(self, path: Path, token: object) -> None:
        with self._lock:
            if self._due.get(path) is not token:
                return  # asked for again since: a later timer removes it
            del self._due[path]
            path.unlink(missing_ok=True)


LOGITS = LogitBudget()
FULL_COPIES = FullCopies()
DOWNLOADS = Downloads()
REDRAW = RedrawBudget()


def configure(logits_mb: int, full_copies: int, download_ttl_s: float,
              redraw_mb: int = DEFAULT_REDRAW_MB) -> None:
    """Set the server's budgets (``AppContext`` does, from its ``Caps``)."""
    LOGITS.limit_bytes = logits_mb * 1_000_000
    FULL_COPIES.limit = full_copies
    DOWNLOADS.ttl_s = float(download_ttl_s)
    REDRAW.limit_bytes = redraw_mb * 1_000_000
