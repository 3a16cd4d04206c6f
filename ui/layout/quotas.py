"""Per-session quotas on Gradio's queue, so one client cannot fill it and keep everyone else waiting.

A small ASGI middleware in front of Gradio's app (installed by ``app.launch`` through
``Blocks.launch(app_kwargs={"middleware": ...})``) looks at each way into the queue before Gradio does:
``POST …/queue/join`` (the page and ``gradio_client``) and ``POST …/call/NAME`` or ``…/call/v2/NAME``
(the plain HTTP API). A call that names no session (possible on ``/call``, where each would otherwise
be a session of its own) counts against its client's address instead.

It counts what the session already has queued or running by asking Gradio's queue itself
(``Queue.event_ids_to_events``: an event is there from its join until its run has ended), plus the joins
this middleware let through that Gradio has not answered yet (so ten joins sent at once cannot all slip
past the count). No second bookkeeping of events that could drift from the queue's.

- A session may have ``caps.max_events_per_session`` events (clicks, API calls) queued or running.
- The page's own follow-ups (an event chained with ``.then``/``.success``, which the browser joins when
  the event before it ends) have an allowance of their own, ``FOLLOW_UPS_PER_EVENT`` times that (the page's
  widest fan-out of follow-ups from one event), so a generation's follow-ups are never refused because of
  the next click.
- Fine-tuning (the ``FINETUNE_POOL`` concurrency id): one per session, and at most
  ``caps.max_queued_finetunes`` waiting or running on the server, so generation stays available.

An extra join is refused at once with HTTP 422 and the body of a Gradio validation error: the
``gradio_client`` raises ``ValidationError`` with the message, the browser shows it on the event's
first input, and the JS client reports it as the status's message. (Gradio's own "queue full" is a 503,
which both clients replace with a fixed "queue is full / busy" text: the reason would be lost.)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware import Middleware

from ..context import Caps

FINETUNE_POOL = "train"  # the fine-tune tab's concurrency id (``ui/layout/finetune.py``)
FOLLOW_UPS_PER_EVENT = 3  # the page's widest fan-out of ``.then`` follow-ups from one event (a generation: its record,
# then the pickers of Attention, Probabilities and the Lab's attribution follow it)
ENTRY = re.compile(r"/(?:queue/join|call/(?:v2/)?(?P<api_name>[^/]+)/?)$")  # the ways into Gradio's queue

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def middleware(demo: Any, caps: Caps) -> list[Middleware]:
    """The ``middleware`` entry of ``Blocks.launch``'s ``app_kwargs`` for ``demo`` under ``caps``."""
    return [Middleware(QueueQuotas, blocks=demo, caps=caps)]


def _kind(fn: Any) -> str:
    """How a queued function counts: "finetune", "follow-up" (chained after another event) or "event"."""
    if fn.concurrency_id == FINETUNE_POOL:
        return "finetune"
    return "follow-up" if fn.trigger_after is not None else "event"


class QueueQuotas:
    """The ASGI middleware: refuses a session's queue joins beyond its quotas (see the module's doc)."""

    def __init__(self, app: Callable, blocks: Any, caps: Caps) -> None:
        self.app, self.blocks, self.caps = app, blocks, caps
        self.joining: Counter[tuple[str, str]] = Counter()  # (session, kind) -> joins Gradio has not answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = ENTRY.search(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if entry is None:
            await self.app(scope, receive, send)
            return
        body, receive = await _read_body(receive)
        session, fn = self._parse(body, entry["api_name"])
        session = session or _address(scope.get("client"))
        if fn is None or not fn.queue:  # not ours to judge: Gradio answers as it always does
            await self.app(scope, receive, send)
            return
        kind = _kind(fn)
        refusal = self.refusal(session, kind)
        if refusal is not None:
            await _refuse(send, refusal)
            return
        self.joining[session, kind] += 1  # no await between the check and this: joins sent at once are counted
        try:
            await self.app(scope, receive, send)  # Gradio has queued the event (or refused it) when this ends
        finally:
            self.joining[session, kind] -= 1
            if not self.joining[session, kind]:
                del self.joining[session, kind]

    def _parse(self, body: bytes, api_name: str | None) -> tuple[str, Any]:
        """The session a join names ("" if none) and the function it asks for (None if it is unclear)."""
        try:
            data = json.loads(body)
            session, index = data.get("session_hash"), data.get("fn_index")
        except (ValueError, AttributeError):
            return "", None
        session = session if isinstance(session, str) and session else ""
        if api_name is not None:  # /call/NAME: the function is named by the path
            return session, next((fn for fn in self.blocks.fns.values() if fn.api_name == api_name), None)
        if not isinstance(index, int) or isinstance(index, bool):
            return session, None
        return session, self.blocks.fns.get(index)

    def counts(self, session: str) -> tuple[Counter[str], int]:
        """The session's events queued or running (and joining), by kind; and the server's fine-tunes."""
        mine: Counter[str] = Counter()
        finetunes = 0
        for event in list(self.blocks._queue.event_ids_to_events.values()):
            kind = _kind(event.fn)
            finetunes += kind == "finetune"
            if _owner(event) == session:
                mine[kind] += 1
        for (s, kind), n in self.joining.items():
            finetunes += n if kind == "finetune" else 0
            if s == session:
                mine[kind] += n
        return mine, finetunes

    def refusal(self, session: str, kind: str) -> str | None:
        """Why a join of ``kind`` by ``session`` is refused now, or None."""
        mine, finetunes = self.counts(session)
        limit = self.caps.max_events_per_session
        if kind == "follow-up":
            if mine["follow-up"] >= FOLLOW_UPS_PER_EVENT * limit:
                return (f"This session already has {mine['follow-up']} updates waiting or running; wait for them "
                        "to finish, then try again.")
            return None
        if mine["event"] + mine["finetune"] >= limit:
            return (f"This session already has {limit} request{'s' if limit != 1 else ''} waiting or running; "
                    "wait for them to finish, then try again.")
        if kind == "finetune" and mine["finetune"]:
            return "This session already has a fine-tune waiting or running; wait for it to finish (or stop it)."
        if kind == "finetune" and finetunes >= self.caps.max_queued_finetunes:
            return (f"The server already has {finetunes} fine-tunes waiting or running; try again in a few "
                    "minutes (generation and analysis stay available meanwhile).")
        return None


def _address(client: Any) -> str:
    """The key of a call that names no session: its client's address (the peer Gradio's server sees)."""
    return f"address {client[0] if client else '?'}"


def _owner(event: Any) -> str:
    """Whose quota a queued event counts against: its session, or (none given) its client's address."""
    if event.session_hash != getattr(event, "_id", None):
        return event.session_hash
    request = getattr(event, "request", None)
    client = getattr(request, "client", None)
    return _address((client.host,) if client is not None else None)


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that gives it to the app again."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: let the app see it
            return b"", _replay([message], receive)
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()
    return replayed


async def _refuse(send: Send, message: str) -> None:
    """Refuse a join as Gradio refuses an invalid one (422, a validation error's ``detail``)."""
    detail = [{"__type__": "validate", "is_valid": False, "message": message, "parameter_name": "request"}]
    body = json.dumps({"detail": detail, "error": message}).encode()
    await send({"type": "http.response.start", "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
