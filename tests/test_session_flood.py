"""Session floods (``ui/layout/sessions.py``): new sessions per client address are rate-limited, so a flood
of new session hashes cannot evict real users; and a session Gradio evicts for capacity is closed like an
expired one (its folder goes). The rules are checked on the middleware with plain ASGI scopes; the attack
against the launched app (a tiny model, ``GPT2_MAX_SESSIONS`` 3) with ``gradio_client``."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import gradio_client
import pytest
from conftest import free_port
from gradio_client.exceptions import ValidationError

from ui.context import Caps
from ui.layout import sessions
from ui.session import Session

PROMPT = "The cat sat"
SHORT = (4, 1.0, 0, 1.0, 1.0, 7, "")
MESSAGE = "Too many new sessions from your address (3 a minute)"


# ---------------------------------------------------------------- the rules, on the middleware itself

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(trust: bool = True, **caps) -> tuple[sessions.NewSessions, list[str], Clock]:
    """The middleware over a stand-in app that records the sessions it was asked about."""
    seen: list[str] = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append(json.loads(message["body"])["session_hash"] if scope["method"] == "POST" else scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    clock = Clock()
    caps = Caps(**{"new_sessions_per_minute": 3, "trust_forwarded": trust, **caps})
    blocks = SimpleNamespace(state_holder=None)
    return sessions.NewSessions(app, blocks, caps, clock=clock), seen, clock


def request(middleware, session: str, address: str = "1.2.3.4", path: str = "/gradio_api/queue/join",
            peer: str = "127.0.0.1") -> tuple[int, dict]:
    """One request through the middleware: its status and JSON body."""
    method = "GET" if "/heartbeat/" in path else "POST"
    headers = [(b"x-forwarded-for", f"{address}, 10.0.0.1".encode())] if address else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "client": (peer, 5000)}
    body = json.dumps({"session_hash": session, "fn_index": 0, "data": []}).encode()
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_an_address_gets_its_new_sessions_and_no_more():
    middleware, seen, _ = guard()
    answers = [request(middleware, f"new{i}") for i in range(6)]
    assert [status for status, _ in answers] == [200, 200, 200, 422, 422, 422]
    assert seen == ["new0", "new1", "new2"]  # refused ones never reach Gradio
    assert MESSAGE in answers[3][1]["detail"][0]["message"]  # a validation error: gradio_client shows it
    assert request(middleware, "new1")[0] == 200  # a known session keeps working
    assert request(middleware, "other", address="5.6.7.8")[0] == 200  # another address is not affected


def test_the_limit_is_per_minute_and_calls_naming_no_session_count():
    middleware, _, clock = guard()
    assert [request(middleware, "")[0] for _ in range(4)] == [200, 200, 200, 422]  # each its own session
    clock.now += 61
    assert request(middleware, "")[0] == 200


def test_the_forwarded_address_is_trusted_only_behind_a_proxy():
    middleware, _, _ = guard(trust=False)
    answers = [request(middleware, f"s{i}", address=f"9.9.9.{i}")[0] for i in range(4)]  # one peer, forged headers
    assert answers == [200, 200, 200, 422]


def test_every_way_to_a_new_session_is_watched():
    middleware, seen, _ = guard(new_sessions_per_minute=1)
    assert request(middleware, "", path="/gradio_api/heartbeat/h1")[0] == 200
    status, body = request(middleware, "", path="/gradio_api/heartbeat/h2")
    assert status == 429 and "Too many new sessions" in body["detail"]
    for path in ("/gradio_api/call/generate", "/gradio_api/call/v2/generate", "/gradio_api/run/generate",
                 "/gradio_api/api/generate", "/gradio_api/component_server/", "/gradio_api/queue/join"):
        assert request(middleware, "fresh", path=path)[0] == 422, path
        assert request(middleware, "h1", path=path)[0] == 200, path  # the heartbeat's session is known
    assert request(middleware, "", path="/gradio_api/upload")[0] == 200  # not a way to a session


def test_gradios_own_sessions_count_as_known():
    middleware, _, _ = guard(new_sessions_per_minute=1)
    middleware.blocks.state_holder = SimpleNamespace(session_data={"held": object()}, lock=threading.Lock(),
                                                     update=lambda session_id: None)
    assert request(middleware, "other")[0] == 200
    assert request(middleware, "held")[0] == 200  # held by Gradio (e.g. let in before a restart of the limit)
    assert request(middleware, "another")[0] == 422


# ---------------------------------------------------------------- the launched app

@pytest.fixture(scope="module")
def flood_app(tiny_dir):
    """The app as ``app.launch`` serves it, with room for 3 sessions and 3 new ones a minute per address."""
    import app
    from ui.layout.page import build_demo

    with pytest.MonkeyPatch.context() as env:
        env.setenv("GPT2_TRUST_FORWARDED", "1")
        ctx = app.make_context(tiny_dir, Caps(max_sessions=3, new_sessions_per_minute=3))
        demo = build_demo(ctx)
        port = free_port()
        app.launch(demo, ctx, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        try:
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", demo=demo, ctx=ctx)
        finally:
            demo.close()


def client(flood_app, address: str) -> gradio_client.Client:
    return gradio_client.Client(flood_app.url, verbose=False, headers={"X-Forwarded-For": address})


def test_a_flood_of_new_sessions_is_refused_and_a_user_keeps_working(flood_app):
    user = client(flood_app, "203.0.113.7")
    user.predict(PROMPT, *SHORT, api_name="/generate")
    flood = [client(flood_app, "198.51.100.1") for _ in range(4)]
    for c in flood[:3]:
        c.predict(PROMPT, *SHORT, api_name="/generate")
    with pytest.raises(ValidationError, match="Too many new sessions"):
        flood[3].predict(PROMPT, *SHORT, api_name="/generate")
    user.predict(PROMPT, *SHORT, api_name="/generate")  # a known session: still served
    client(flood_app, "192.0.2.9").predict(PROMPT, *SHORT, api_name="/generate")  # another address: served


def test_an_evicted_session_is_closed_like_an_expired_one(flood_app):
    import httpx

    httpx.get(flood_app.url + "gradio_api/info", timeout=30)  # any request: the middleware hooks Gradio's sessions
    demo, holder = flood_app.demo, flood_app.demo.state_holder
    state = next(b for b in demo.blocks.values() if getattr(b, "delete_callback", None) is not None
                 and type(b).__name__ == "State")
    victim = Session(model_key=flood_app.ctx.default_key)
    folder = victim.workdir
    assert folder.is_dir()
    holder["victim"][state._id] = victim
    for i in range(holder.capacity):  # each new session pushes the least recently used one out
        thread = threading.Thread(target=holder.__getitem__, args=(f"filler{i}",))  # as Gradio's workers do
        thread.start()
        thread.join()
    assert "victim" not in holder.session_data
    assert not folder.exists()
