"""Per-session quotas on Gradio's queue (``ui/layout/quotas.py``): one client flooding the queue is refused
at once with a message that says why, and other users are still served promptly. The rules are checked on
a stand-in queue; the attack against the launched app (``served``, a tiny model) with ``gradio_client``."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from ui.context import Caps
from ui.layout import quotas

PROMPT = "The cat sat"
LONG = (256, 1.0, 0, 1.0, 1.0, 7, "")  # /generate after the prompt: a long generation, to overlap
SHORT = (16, 1.0, 0, 1.0, 1.0, 7, "")
TEXT = " ".join(f"The cat number {i} sat on the mat." for i in range(60))
QUOTA_MESSAGE = "already has 2 requests waiting or running; wait for them to finish"


# ---------------------------------------------------------------- the rules, on a stand-in for Gradio's queue

EVENT = SimpleNamespace(concurrency_id="model", trigger_after=None, queue=True)
FOLLOW_UP = SimpleNamespace(concurrency_id="model", trigger_after=4, queue=True)
FINETUNE = SimpleNamespace(concurrency_id=quotas.FINETUNE_POOL, trigger_after=None, queue=True)


def quota(*events: tuple[str, object], **caps) -> quotas.QueueQuotas:
    """The middleware over a queue holding ``events`` ((session, fn) pairs)."""
    held = {str(i): SimpleNamespace(session_hash=s, fn=fn) for i, (s, fn) in enumerate(events)}
    blocks = SimpleNamespace(_queue=SimpleNamespace(event_ids_to_events=held), fns={})
    return quotas.QueueQuotas(None, blocks, Caps(**caps))


def test_a_session_gets_its_quota_and_no_more():
    assert quota(("a", EVENT)).refusal("a", "event") is None
    refused = quota(("a", EVENT), ("a", EVENT)).refusal("a", "event")
    assert refused is not None and QUOTA_MESSAGE in refused
    assert quota(("a", EVENT), ("a", EVENT)).refusal("b", "event") is None  # other sessions are not affected
    assert quota(("a", EVENT), max_events_per_session=3).refusal("a", "event") is None


def test_joins_in_flight_count_like_queued_events():
    q = quota(("a", EVENT))
    q.joining["a", "event"] = 1  # let through, not yet answered by Gradio
    assert q.refusal("a", "event") is not None


def test_the_pages_own_follow_ups_have_their_own_allowance():
    busy = quota(("a", EVENT), ("a", EVENT))
    assert busy.refusal("a", "follow-up") is None  # a finished event's .then runs even with two clicks pending
    full = quota(*[("a", FOLLOW_UP)] * (quotas.FOLLOW_UPS_PER_EVENT * 2))
    assert "updates waiting or running" in full.refusal("a", "follow-up")


def test_one_finetune_per_session_and_a_few_on_the_server():
    assert "a fine-tune waiting or running" in quota(("a", FINETUNE)).refusal("a", "finetune")
    assert quota(("a", FINETUNE)).refusal("a", "event") is None  # generation stays available to it
    server = quota(*[(f"s{i}", FINETUNE) for i in range(4)])
    assert "fine-tunes waiting or running" in server.refusal("a", "finetune")
    assert server.refusal("a", "event") is None
    assert quota(*[(f"s{i}", FINETUNE) for i in range(3)]).refusal("a", "finetune") is None


def test_calls_without_a_session_count_against_their_address():
    def anonymous(event_id: str) -> SimpleNamespace:  # Gradio gives a call without a session its own id as one
        client = SimpleNamespace(host="10.0.0.7")
        return SimpleNamespace(session_hash=event_id, _id=event_id, fn=EVENT, request=SimpleNamespace(client=client))

    q = quota()
    q.blocks._queue.event_ids_to_events.update({"e1": anonymous("e1"), "e2": anonymous("e2")})
    assert quotas._owner(anonymous("e1")) == quotas._address(("10.0.0.7", 1234))
    assert q.refusal(quotas._address(("10.0.0.7", 1234)), "event") is not None
    assert q.refusal(quotas._address(("10.0.0.8", 1234)), "event") is None


def test_every_way_into_the_queue_is_watched():
    for path in ("/gradio_api/queue/join", "/gradio_api/call/generate", "/gradio_api/call/v2/generate/"):
        assert quotas.ENTRY.search(path), path
    assert quotas.ENTRY.search("/gradio_api/call/generate")["api_name"] == "generate"
    assert not quotas.ENTRY.search("/gradio_api/upload")


def test_the_fine_tune_pool_is_the_fine_tune_tabs(app_ctx):
    from ui.layout.page import build_demo

    demo = build_demo(app_ctx)
    pools = {fn.api_name: fn.concurrency_id for fn in demo.fns.values()}
    assert pools["finetune"] == quotas.FINETUNE_POOL
    assert sum(pool == quotas.FINETUNE_POOL for pool in pools.values()) == 1
    fan_out: dict[int, int] = {}
    for fn in demo.fns.values():
        if fn.queue and fn.trigger_after is not None:
            fan_out[fn.trigger_after] = fan_out.get(fn.trigger_after, 0) + 1
    assert max(fan_out.values()) <= quotas.FOLLOW_UPS_PER_EVENT


# ---------------------------------------------------------------- the attack, against the launched app


@pytest.fixture()
def client(served):
    gradio_client = pytest.importorskip("gradio_client")
    return lambda: gradio_client.Client(served.url, verbose=False)


def outcomes(jobs) -> tuple[int, list[str]]:
    """How many jobs ended with a result, and the errors of the others."""
    done, errors = 0, []
    for job in jobs:
        try:
            job.result(timeout=120)
            done += 1
        except Exception as e:  # noqa: BLE001 - the refusal's type is gradio_client's business
            errors.append(str(e))
    return done, errors


@pytest.mark.slow
def test_a_flooding_session_gets_two_and_a_new_user_is_served_at_once(client):
    flooder, newcomer = client(), client()
    jobs = [flooder.submit(PROMPT, *LONG, api_name="/generate") for _ in range(10)]
    time.sleep(0.5)  # the flood is in: the first two hold their places, the rest are refused at once
    start = time.monotonic()
    newcomer.predict(PROMPT, *SHORT, api_name="/generate")
    waited = time.monotonic() - start
    done, errors = outcomes(jobs)
    assert done <= 2 and len(errors) >= 8
    assert all(QUOTA_MESSAGE in e for e in errors), errors[:2]
    assert waited < 10, f"a new user waited {waited:.1f} s behind one flooding session"


@pytest.mark.slow
def test_a_second_finetune_of_a_session_is_refused_while_the_first_runs(client):
    trainer = client()
    kwargs = dict(text=TEXT, file=None, column="text", mode="LoRA", steps=20, learning_rate=5e-3, batch_size=2,
                  block_size=16, lora_rank=4, sample_prompt="The cat", seed=0, api_name="/finetune")
    first = trainer.submit(**kwargs)
    time.sleep(0.3)
    second = trainer.submit(**kwargs)
    done, errors = outcomes([first, second])
    assert done == 1 and len(errors) == 1
    assert "fine-tune waiting or running" in errors[0]


@pytest.mark.slow
def test_a_session_that_waits_for_each_result_is_never_refused(client):
    user = client()
    for _ in range(6):
        user.predict(PROMPT, *SHORT, api_name="/generate")
    with ThreadPoolExecutor(2) as pool:  # two at once is within the quota
        list(pool.map(lambda _: user.predict(PROMPT, *SHORT, api_name="/generate"), range(2)))


@pytest.mark.slow
def test_the_plain_http_api_has_the_same_quota(served):
    """``POST /gradio_api/call/generate`` without a session: the calls count against the client's address."""
    import httpx

    def call(_):
        with httpx.Client(base_url=served.url, timeout=60) as http:
            return http.post("gradio_api/call/generate", json={"data": [PROMPT, *LONG]})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(6)))
    refused = [r for r in answers if r.status_code == 422]
    assert sum(r.status_code == 200 for r in answers) <= 2 and len(refused) >= 4
    assert QUOTA_MESSAGE in refused[0].json()["error"]
