"""Request size (``ui.layout.limits``): every request body is capped while it is read (Content-Length or
counted chunks), an upload carries at most ``GPT2_MAX_FILES_PER_UPLOAD`` files, and ordinary requests
(a generation, the largest allowed upload, the largest pasted text) still pass."""

from __future__ import annotations

import json

import pytest

from ui.context import Caps
from ui.layout import limits

CAPS = Caps()
# every /generate input: a raw call sends them all (the advanced samplers, then decoding and beam settings)
GENERATE = ["The cat sat", 2, 0, 0, 1.0, 1.0, 0, "", 0.0, 1.0, 0.0, 0.0, 0, "sampling", 4, 1.0, "false"]


def test_default_cap_admits_the_largest_pasted_text_escaped():
    """2 MB of pasted text, even with every character JSON-escaped to twice its UTF-8 size (``\\u4e2d``
    for a 3-byte character), fits in one request; a 50 MB prompt does not."""
    escaped = json.dumps({"data": ["中" * (CAPS.max_upload_bytes // 3)]})
    assert CAPS.max_upload_bytes < len(escaped) <= CAPS.max_request_bytes < 50_000_000
    assert CAPS.max_files_per_upload == 1


@pytest.mark.parametrize(("body", "files"), [
    (b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\nhi\r\n--XyZ--\r\n', 1),
    (b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\nhi\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="b.txt"\r\n\r\nho\r\n'
     b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nplain field\r\n--XyZ--\r\n', 2),
    (b"--XyZ--\r\n", 0),
])
def test_count_files(body: bytes, files: int):
    assert limits.count_files(b"multipart/form-data; boundary=XyZ", body) == files
    assert limits.count_files(b"application/json", body) == 0


def _generate(http, session: str, prompt: str = "The cat sat") -> str:
    """A /generate over plain HTTP, to its end: the stats (raises if it fails)."""
    body = json.dumps({"data": [prompt, *GENERATE[1:]], "session_hash": session})
    r = http.post("gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    with http.stream("GET", f"gradio_api/call/generate/{r.json()['event_id']}") as stream:
        lines = list(stream.iter_lines())
    assert "event: complete" in lines, lines[-4:]
    return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data:"))[1]


@pytest.fixture()
def http(served):
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client


def _refused(r, status: int = 413, *patterns: str) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    message = r.json()["detail"]
    for pattern in patterns:
        assert pattern in message, message
    return message


@pytest.mark.slow
def test_over_cap_body_refused_and_the_app_keeps_serving(http):
    """A 50 MB prompt's request (here: just over the cap) is refused with 413 and the cap, before Gradio."""
    prompt = "a" * (CAPS.max_request_bytes + 1)
    body = json.dumps({"data": [prompt, *GENERATE[1:]], "session_hash": "size-over"})
    r = http.post("gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
    _refused(r, 413, "too large", f"{CAPS.max_request_bytes:,} bytes")
    r = http.post("gradio_api/queue/join", content=body, headers={"content-type": "application/json"})
    _refused(r, 413, "too large")
    assert "2 tokens" in _generate(http, "size-over")


@pytest.mark.slow
def test_chunked_body_over_cap_refused(http):
    """No Content-Length (chunked transfer) does not get past the cap: the chunks are counted."""
    chunk = b"a" * 65_536

    def body():
        yield b'{"data": ["'
        for _ in range(CAPS.max_request_bytes // len(chunk) + 2):
            yield chunk
        yield b'"], "session_hash": "size-chunked"}'

    r = http.post("gradio_api/call/generate", content=body(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    _refused(r, 413, "too large")
    assert "2 tokens" in _generate(http, "size-chunked")


@pytest.mark.slow
def test_one_file_per_upload(http):
    one = [("files", ("a.txt", b"the cat sat on the mat\n" * 10))]
    r = http.post("gradio_api/upload", files=one)
    assert r.status_code == 200 and len(r.json()) == 1, r.text
    r = http.post("gradio_api/upload", files=one + [("files", ("b.txt", b"another"))])
    _refused(r, 413, "Too many files", "at most 1")


@pytest.mark.slow
def test_largest_upload_and_prompt_still_pass(http):
    """A 1.9 MB upload is taken; a prompt that fills the request cap is read, then cropped as always."""
    r = http.post("gradio_api/upload", files=[("files", ("big.txt", b"the cat sat on the mat\n" * 82_000))])
    assert r.status_code == 200 and len(r.json()) == 1, r.text
    stats = _generate(http, "size-largest", prompt="a" * (CAPS.max_request_bytes - 1_000))
    assert "2 tokens" in stats and "cropped" in stats


def test_upload_volume_per_address_per_hour():
    """An address's uploads in the last hour total at most the cap (429 beyond it); others are not held
    back, and an hour later the address may upload again. (The middleware alone, with a fake clock.)"""
    import asyncio
    import dataclasses

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[]"})

    now = [0.0]
    caps = dataclasses.replace(CAPS, max_upload_bytes_per_hour=250)
    limited = limits.RequestLimits(app, caps, clock=lambda: now[0])
    body = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\n'
            + b"x" * 20 + b"\r\n--B--\r\n")

    def upload(host: str) -> int:
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "client": (host, 1),
                 "headers": [(b"content-type", b"multipart/form-data; boundary=B"),
                             (b"content-length", str(len(body)).encode())]}
        asyncio.run(limited(scope, receive, send))
        return sent[0]["status"]

    assert [upload("10.0.0.1") for _ in range(3)] == [200, 200, 429]  # 2 x ~105 bytes fit in 250
    assert upload("10.0.0.2") == 200
    now[0] = 3601
    assert upload("10.0.0.1") == 200
