"""Session floods: new sessions per client address are rate-limited, and a session Gradio evicts is closed.

Gradio keeps every session's state (``StateHolder.session_data``, an ordered dict) up to
``state_session_capacity`` sessions (``caps.max_sessions``) and then drops the least recently used one,
without running the ``gr.State``'s ``delete_callback`` (Gradio 6.31, ``StateHolder.update``). So a client
that sends a few thousand cheap requests, each with a new session hash, could evict real users' sessions,
and the evicted sessions' folders, fine-tuned models and records stayed behind until the process exited.

A small ASGI middleware in front of Gradio's app (installed by ``app.launch``, next to ``ui.layout.quotas``):

- **New sessions per address.** Every way a request can create a session in Gradio (``POST …/queue/join``,
  ``…/call/NAME``, ``…/call/v2/NAME``, ``…/run/NAME``, ``…/api/NAME``, ``…/component_server``, and
  ``GET …/heartbeat/HASH``, whose disconnect runs the page's unload handler in that session) is looked at
  first. A session hash this middleware let in recently, or one Gradio already holds, passes. An unseen one
  (or none: Gradio then makes each call a session of its own) counts against its client's address: at
  most ``caps.new_sessions_per_minute`` in any 60 s; beyond that it is refused at once, a POST as Gradio
  refuses an invalid join (HTTP 422 with a validation error's body, see ``quotas``: ``gradio_client`` and
  the page show the message), the heartbeat with HTTP 429. A page or a ``gradio_client.Client`` is one
  session for its whole life, so ordinary use never comes near the limit.
- **The address.** The socket's peer, or, when ``caps.trust_forwarded`` says the app is behind a proxy
  (``GPT2_TRUST_FORWARDED=1``, or on a Hugging Face Space), the first address of ``X-Forwarded-For`` as
  the proxy passes it on. Not trusted otherwise: any client could write the header.
- **Eviction closes.** The first request hooks Gradio's ``StateHolder`` (it exists only once ``launch`` has
  built the server app): a session it evicts for capacity has its States' delete callbacks run, as an
  expired or closed one has (``ui.layout.page._close``: the session's folder, fine-tuned model and
  records go). The callbacks run after Gradio's lock is released.

Memory is bounded: the sessions let in are remembered in one LRU of ``2 × caps.max_sessions`` hashes,
and each address keeps at most ``new_sessions_per_minute`` times, dropped once a minute old.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware

from ..context import Caps
from .quotas import Receive, Scope, Send, _read_body, _refuse

log = logging.getLogger(__name__)

WINDOW_S = 60.0
# POSTs that name (or, naming none, create) a session; the heartbeat, a GET that names one in its path
ENTRY = re.compile(r"/(?:queue/join|call/(?:v2/)?[^/]+|run/[^/]+|api/[^/]+|component_server)/?$")
HEARTBEAT = re.compile(r"/heartbeat/(?P<session>[^/]+)/?$")


def middleware(demo: Any, caps: Caps) -> list[Middleware]:
    """The ``middleware`` entry (a list) of ``Blocks.launch``'s ``app_kwargs`` for ``demo`` under ``caps``."""
    return [Middleware(NewSessions, blocks=demo, caps=caps)]


def client_address(scope: Scope, trust_forwarded: bool) -> str:
    """The client's address: ``X-Forwarded-For``'s first one where a proxy is trusted, else the peer's."""
    if trust_forwarded:
        for name, value in scope.get("headers") or ():
            if name.lower() == b"x-forwarded-for":
                first = value.decode("latin-1").split(",")[0].strip()
                if first:
                    return first
    client = scope.get("client")
    return str(client[0]) if client else "?"


class NewSessions:
    """The ASGI middleware: refuses an address's new sessions beyond the rate (see the module's doc)."""

    def __init__(self, app: Callable, blocks: Any, caps: Caps, clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.blocks, self.caps, self.clock = app, blocks, caps, clock
        self.admitted: OrderedDict[str, None] = OrderedDict()  # sessions let in, most recently seen last
        self.recent: dict[str, deque[float]] = {}  # address -> when it was given its new sessions (last minute)
        self.pruned = clock()
        self.hooked: Any = None  # the StateHolder whose evictions close sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._hook()
        session: str | None = None
        path, method = scope["path"], scope["method"]
        heartbeat = HEARTBEAT.search(path) if method == "GET" else None
        if heartbeat is not None:
            session = heartbeat["session"]
        elif method == "POST" and ENTRY.search(path):
            body, receive = await _read_body(receive)
            session = _session_hash(body)
        else:
            await self.app(scope, receive, send)
            return
        refusal = self.admit(session, client_address(scope, self.caps.trust_forwarded))
        if refusal is None:
            await self.app(scope, receive, send)
        elif heartbeat is not None:
            await _too_many(send, refusal)
        else:
            await _refuse(send, refusal)

    def known(self, session: str) -> bool:
        """Whether ``session`` was let in recently or is held by Gradio (then it is remembered as recent)."""
        holder = getattr(self.blocks, "state_holder", None)
        if session in self.admitted or (holder is not None and session in holder.session_data):
            self._remember(session)
            return True
        return False

    def admit(self, session: str, address: str) -> str | None:
        """Let ``session`` (``""``: a call naming none) from ``address`` in, or say why not."""
        if session and self.known(session):
            return None
        limit = self.caps.new_sessions_per_minute
        if limit <= 0:  # no limit
            return None
        now = self.clock()
        self._prune(now)
        times = self.recent.setdefault(address, deque())
        while times and now - times[0] >= WINDOW_S:
            times.popleft()
        if len(times) >= limit:
            return (f"Too many new sessions from your address ({limit} a minute). Keep using one session (one "
                    "open page, or one gradio_client Client) or try again in a minute.")
        times.append(now)
        if session:
            self._remember(session)
        return None

    def _remember(self, session: str) -> None:
        self.admitted[session] = None
        self.admitted.move_to_end(session)
        while len(self.admitted) > 2 * max(self.caps.max_sessions, 1):
            self.admitted.popitem(last=False)

    def _prune(self, now: float) -> None:
        """Forget addresses with no new session in the last minute (at most once a minute)."""
        if now - self.pruned < WINDOW_S:
            return
        self.pruned = now
        for address in [a for a, times in self.recent.items() if not times or now - times[-1] >= WINDOW_S]:
            del self.recent[address]

    def _hook(self) -> None:
        holder = getattr(self.blocks, "state_holder", None)
        if holder is not None and holder is not self.hooked:
            close_evicted(holder)
            self.hooked = holder


def _session_hash(body: bytes) -> str:
    """The session a POST's JSON body names, or ``""`` (none, or a body that is not JSON)."""
    try:
        session = json.loads(body).get("session_hash")
    except (ValueError, AttributeError):
        return ""
    return session if isinstance(session, str) else ""


async def _too_many(send: Send, message: str) -> None:
    body = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(int(WINDOW_S)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- eviction runs the sessions' cleanup

class _Evicting(OrderedDict):
    """Gradio's ``session_data`` that keeps what ``StateHolder.update`` evicts (its only
    ``popitem(last=False)``), for the delete callbacks to run once Gradio's lock is released."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.evicted: list[Any] = []

    def popitem(self, last: bool = True) -> tuple[str, Any]:
        item = super().popitem(last=last)
        if not last:
            self.evicted.append(item[1])
        return item


def close_evicted(holder: Any) -> None:
    """Make Gradio's ``holder`` run its States' delete callbacks for the sessions it evicts for capacity,
    as it does for expired ones (``StateHolder.delete_state``). Idempotent."""
    if isinstance(holder.session_data, _Evicting):
        return
    with holder.lock:
        holder.session_data = data = _Evicting(holder.session_data)
    update = holder.update

    def updating(session_id: str) -> None:
        update(session_id)
        while data.evicted:
            try:
                state = data.evicted.pop()
            except IndexError:  # another thread took it
                break
            _delete(state)

    holder.update = updating


def _delete(session_state: Any) -> None:
    for component, value, _expired in list(session_state.state_components):
        try:
            component.delete_callback(value)
        except Exception:  # noqa: BLE001 - one session's cleanup must not fail another's request
            log.exception("closing an evicted session failed")
    session_state.state_data.clear()
