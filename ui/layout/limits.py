"""Request size limits in front of Gradio's app: a cap on every request body, and files per upload.

A small ASGI middleware (installed by ``app.launch`` through ``Blocks.launch(app_kwargs={"middleware":
...})``, outside ``ui.layout.quotas`` so that no body is read before it is measured):

- **The body of every request** may be at most ``caps.max_request_bytes``. A ``Content-Length`` over
  the cap is refused before a byte is read; a body without one (chunked transfer) is counted while it is
  read and refused as soon as it passes the cap. Gradio's own limits are per file (``max_file_size``),
  so without this a JSON request of any size (a 50 MB prompt) was read, parsed and kept.
- **Files per upload:** ``POST …/upload`` (which needs no session) may carry at most
  ``caps.max_files_per_upload`` files (Gradio's own limit is 1,000); the app's one upload widget, and
  ``gradio_client``, send one file per request.
- **Upload volume per address:** the upload bodies one client address (``ui.layout.sessions``'s
  ``client_address``: the forwarded one behind a trusted proxy) sent in the last hour may total at most
  ``caps.max_upload_bytes_per_hour`` (0: no limit); uploads need no session, so the address is the
  only key, and Gradio keeps uploaded files in its cache for 15 minutes (``delete_cache``): this bounds the
  disk one client can fill.

A body is read whole (it is at most the cap) before the app sees it, then handed to the app unchanged.
A refusal is HTTP 413 (too large, too many files), 429 (upload volume) or 400 (a malformed
``Content-Length``) with a JSON body whose ``detail`` and ``error`` say what the limit is.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware import Middleware

from ..context import Caps
from .sessions import client_address

HOUR = 3600.0

UPLOAD = re.compile(r"/upload/?$")  # Gradio's upload route (``/gradio_api/upload``)
BOUNDARY = re.compile(rb'boundary="?([^";,\s]+)"?', re.IGNORECASE)
FILENAME = re.compile(rb"filename\*?=", re.IGNORECASE)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def middleware(caps: Caps) -> list[Middleware]:
    """The entries of ``Blocks.launch``'s ``app_kwargs["middleware"]`` for ``caps`` (put them first)."""
    return [Middleware(RequestLimits, caps=caps)]


def size_text(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)"


class TooLarge(Exception):
    """The request is refused: its HTTP status and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestLimits:
    """The ASGI middleware (see the module's doc)."""

    def __init__(self, app: Callable, caps: Caps, clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self.caps, self.clock = app, caps, clock
        self.uploaded: dict[str, deque[tuple[float, int]]] = {}  # address -> (time, bytes) of its uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        try:
            self.check_length(headers)
            if scope["method"] in ("GET", "HEAD", "OPTIONS"):  # no body expected; an event stream's receive
                await self.app(scope, self.counting(receive), send)  # waits for a disconnect: never buffer it
                return
            body, receive = await self.read_body(receive)
            if scope["method"] == "POST" and UPLOAD.search(scope["path"]):
                self.check_files(headers, body)
                self.count_upload(client_address(scope, getattr(self.caps, "trust_forwarded", False)), len(body))
        except TooLarge as e:
            await refuse(send, e.status, str(e))
            return
        await self.app(scope, receive, send)

    def too_large(self) -> TooLarge:
        return TooLarge(413, f"The request is too large: at most {size_text(self.caps.max_request_bytes)} per "
                             f"request (files at most {size_text(self.caps.max_upload_bytes)}).")

    def check_length(self, headers: dict[bytes, bytes]) -> None:
        length = headers.get(b"content-length")
        if length is None:
            return
        if not length.strip().isdigit():
            raise TooLarge(400, "The request's Content-Length is not a whole number of bytes.")
        if int(length) > self.caps.max_request_bytes:
            raise self.too_large()

    async def read_body(self, receive: Receive) -> tuple[bytes, Receive]:
        """The whole body (refused as soon as it passes the cap), and a ``receive`` that replays it."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return b"", _replay([message], receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.caps.max_request_bytes:
                raise self.too_large()
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        return body, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)

    def counting(self, receive: Receive) -> Receive:
        """``receive`` for a request that should have no body: one over the cap ends as a disconnect."""
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.caps.max_request_bytes:
                    return {"type": "http.disconnect"}
            return message
        return counted

    def count_upload(self, address: str, size: int) -> None:
        """Count an upload of ``size`` bytes against ``address``'s hour, or refuse it (429)."""
        limit = self.caps.max_upload_bytes_per_hour
        if limit <= 0:
            return
        now = self.clock()
        for key in [k for k, q in self.uploaded.items() if q[-1][0] <= now - HOUR]:  # forget quiet addresses
            del self.uploaded[key]
        recent = self.uploaded.setdefault(address, deque())
        while recent and recent[0][0] <= now - HOUR:
            recent.popleft()
        used = sum(n for _, n in recent)
        if used + size > limit:
            if not recent:
                del self.uploaded[address]
            raise TooLarge(429, f"Too much uploaded from this address: {size_text(used)} in the last hour, at most "
                                f"{size_text(limit)} per hour; try again later.")
        recent.append((now, size))

    def check_files(self, headers: dict[bytes, bytes], body: bytes) -> None:
        n = count_files(headers.get(b"content-type", b""), body)
        limit = self.caps.max_files_per_upload
        if n > limit:
            raise TooLarge(413, f"Too many files in one upload: {n}; at most {limit} per request "
                                "(upload files one at a time).")


def count_files(content_type: bytes, body: bytes) -> int:
    """The file parts (those with a ``filename``) of a multipart body; 0 when it is not multipart."""
    found = BOUNDARY.search(content_type) if content_type.lower().startswith(b"multipart/") else None
    if found is None:
        return 0
    n = 0
    for part in body.split(b"--" + found[1])[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        n += bool(FILENAME.search(part.split(b"\r\n\r\n", 1)[0]))
    return n


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return messages.pop(0) if messages else await receive()
    return replayed


async def refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
