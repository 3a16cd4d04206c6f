"""End to end: the whole app (``app.make_context`` + ``build_demo``) launched on a local port and driven with
``gradio_client`` the way an API user would: every tab's endpoint, streaming, seeds, errors, per-client
sessions, and two clients fine-tuning at once. A tiny random model keeps it to seconds on a shared CPU.
The app is launched by the shared ``served`` fixture (conftest.py)."""

from __future__ import annotations

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import free_port

import gpt2

gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

PROMPT = "The cat sat"
# /generate inputs after the prompt: max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop
SAMPLED = (24, 1.0, 0, 1.0, 1.0, 7, "")
GREEDY = (24, 0, 0, 1.0, 1.0, 0, "")
# the later /generate inputs (advanced samplers, decoding, beams) that a raw HTTP call must send too
RAW_DEFAULTS = (0.0, 1.0, 0.0, 0.0, 0, "sampling", 4, 1.0, "false")
TEXT_A = " ".join(f"The cat number {i} sat on the mat." for i in range(120))
TEXT_B = "\n".join(f"ROMEO: O {i}, thy love is {i * 7} roses." for i in range(120))
ENDPOINTS = {"/generate", "/compare", "/attention", "/step_probabilities", "/text_probabilities", "/finetune",
             "/download_finetuned", "/load_model", "/beam_search", "/branch", "/diversity", "/chat"}


def client(served) -> gradio_client.Client:
    """A new API client: its own session (gradio_client keeps one session hash per Client)."""
    return gradio_client.Client(served.url, verbose=False)


@pytest.fixture(scope="module")
def c(served) -> gradio_client.Client:
    return client(served)


def generate(cl: gradio_client.Client, prompt: str = PROMPT, args: tuple = SAMPLED) -> str:
    text, _stats, _view = cl.predict(prompt, *args, api_name="/generate")
    return text


def plot_json(value) -> dict:
    """A gr.Plot output as the client receives it: {"type": "plotly", "plot": "<figure json>"}."""
    assert isinstance(value, dict) and value.get("type") == "plotly", value
    plot = value["plot"]
    return json.loads(plot) if isinstance(plot, str) else plot


def test_every_tab_has_its_named_endpoint(c):
    info = c.view_api(print_info=False, return_format="dict")
    assert ENDPOINTS <= set(info["named_endpoints"])


def test_generate_streams_growing_text_and_ends_like_predict(c):
    job = c.submit(PROMPT, *SAMPLED, api_name="/generate")
    final_text, final_stats, final_view = job.result()
    texts = [out[0] for out in job.outputs()]
    assert len(texts) >= 3 and texts[0] == ""  # cleared, the first token, ..., the end
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))  # the text only grows
    assert len({*texts}) >= 3 and texts[-1] == final_text
    assert "tokens" in final_stats and "finished" in final_stats
    assert generate(c) == final_text  # the same request again, with predict: the same text


def test_seeds_reproduce_and_differ(c, served):
    same = generate(client(served))  # another session, same seed
    assert generate(c) == same
    assert generate(c, args=SAMPLED[:5] + (8, "")) != same


def test_greedy_matches_the_library(c, served):
    model = gpt2.GPT2.from_pretrained(served.model_dir)
    params = gpt2.SamplingParams(temperature=0, max_new_tokens=GREEDY[0])
    assert generate(c, args=GREEDY) == gpt2.generate_text(model, PROMPT, params)


def test_invalid_parameters_are_refused_with_a_clear_message(c):
    # top_p past the slider's range: gradio's own bounds check answers (naming the value and the bound)
    with pytest.raises(gradio_client.exceptions.AppError, match=r"1\.5.*(maximum|top_p)"):
        c.predict(PROMPT, 8, 1.0, 0, 1.5, 1.0, 0, "", api_name="/generate")
    # inside the slider's range but not a whole number: the app's own check names the parameter
    with pytest.raises(gradio_client.exceptions.AppError, match=r"top_k must be a whole number.*got 2\.5"):
        c.predict(PROMPT, 8, 1.0, 2.5, 1.0, 1.0, 0, "", api_name="/generate")
    assert generate(c)  # the next ordinary request works


def test_compare_streams_two_settings(c):
    a, b, stats = c.predict(PROMPT, 12, *SAMPLED[1:5], 0.0, 0, 1.0, 1.0, 3, "", api_name="/compare")
    assert a and b and a != b and "A:" in stats and "B:" in stats


def test_attention_and_text_probabilities_return_figures(c):
    text = "The cat sat on the mat. The cat sat on the mat."
    fig, table, note = c.predict(text, "text", None, 0, 1, "one head", 5, 0, api_name="/attention")
    assert plot_json(fig)["data"][0]["type"] == "heatmap"
    assert len(table["data"]) == 2 * 2 and f"{len(gpt2.encode(text))} tokens" in note  # tiny: 2 layers x 2 heads
    highlights, info, surprisal, lens = c.predict(text, api_name="/text_probabilities")
    assert len(highlights) == len(gpt2.encode(text)) and "Perplexity" in info
    assert plot_json(surprisal)["data"] and plot_json(lens)["data"][0]["type"] == "heatmap"


def test_step_probabilities_read_this_clients_own_generation(served):
    fresh = client(served)
    with pytest.raises(gradio_client.exceptions.AppError, match="No generation yet"):
        fresh.predict(None, 0, 1.0, 0, 1.0, 1.0, api_name="/step_probabilities")
    generate(fresh, args=GREEDY)
    fig, info = fresh.predict(None, 2, 0.5, 5, 0.9, 1.0, api_name="/step_probabilities")
    model = gpt2.GPT2.from_pretrained(served.model_dir)
    steps = list(gpt2.generate(model, gpt2.encode(PROMPT), gpt2.SamplingParams(temperature=0, max_new_tokens=24)))
    assert plot_json(fig)["data"] and f"**Step 2** of {len(steps)}" in info
    assert f"chose **`{gpt2.token_display([steps[2].token_id])[0]}`**" in info  # the greedy run's third token


def test_unknown_model_is_refused_and_the_current_one_keeps_working(c, served):
    before = generate(c)
    with pytest.raises(gradio_client.exceptions.AppError, match="not one of the offered|not one of the choices"):
        c.predict("/etc/passwd", api_name="/load_model")
    info = c.predict(served.key, api_name="/load_model")
    assert "parameters" in info and "2 layers" in info
    assert generate(c) == before


def test_two_clients_fine_tune_at_once_in_isolated_sessions(served):
    bystander = client(served)
    base = generate(bystander)
    trainers = {"a": client(served), "b": client(served)}
    with ThreadPoolExecutor(2) as pool:  # text, file, column, mode, steps, lr, batch, block, rank, prompt, seed
        runs = {name: pool.submit(trainers[name].predict, text, None, "text", "LoRA", 3, 1e-2, 2, 16, 4, "The", 0,
                                  api_name="/finetune") for name, text in (("a", TEXT_A), ("b", TEXT_B))}
        results = {name: run.result(timeout=120) for name, run in runs.items()}  # re-raises a run's error
    downloads = {name: trainers[name].predict(api_name="/download_finetuned") for name in "ab"}
    for name in "ab":
        fig, progress, before, after, _ = results[name]
        download = downloads[name]
        assert "Finished all 3 steps" in progress and "batch 2 × block 16" in progress
        assert [t["name"] for t in plot_json(fig)["data"]][:1] == ["train"]
        with zipfile.ZipFile(download["value"]) as z:  # each client downloaded its own model
            assert set(z.namelist()) == {"config.json", "model.safetensors"}
    (_, _, before_a, after_a, _), (_, _, before_b, after_b, _) = results["a"], results["b"]
    zip_a, zip_b = downloads["a"], downloads["b"]
    assert before_a == before_b  # both "before" samples: the shared base, same prompt and seed
    assert after_a != after_b and before_a not in (after_a, after_b)  # each "after": that session's adapter
    assert Path(zip_a["value"]).read_bytes() != Path(zip_b["value"]).read_bytes()
    assert generate(bystander) == base  # a third session still generates with the untouched base
    assert generate(client(served)) == base
    tuned = {name: generate(trainers[name]) for name in "ab"}
    assert base not in tuned.values() and tuned["a"] != tuned["b"]


def test_gradio_monitoring_is_off(served):
    """Gradio's /monitoring pages would show anyone every endpoint's traffic and timings, of all users."""
    import httpx

    for path in ("monitoring", "monitoring/summary"):
        assert httpx.get(f"{served.url}{path}", timeout=10).status_code in (403, 404), path


def test_closing_the_server_removes_its_sessions_folders(served):
    """``demo.close()`` closes every session it holds, so their private folders (pasted text, uploads,
    zips) go with the server. A page's session closes when its page goes away; an HTTP API caller's (no
    page, no heartbeat) would wait for its expiry, or for the process's exit."""
    import httpx

    import app
    from ui.layout.page import build_demo
    from ui.session import Session

    ctx = app.make_context(str(served.model_dir))
    demo = build_demo(ctx)
    port = free_port()
    app.launch(demo, ctx, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/gradio_api/", timeout=30) as http:
            body = {"data": [PROMPT, *GREEDY, *RAW_DEFAULTS], "session_hash": "api-caller"}
            event = http.post("call/generate", json=body).json()["event_id"]
            assert "event: complete" in http.get(f"call/generate/{event}").text
        held = demo.state_holder.session_data["api-caller"].state_data.values()
        session = next(v for v in held if isinstance(v, Session))
        folder = session.workdir
        (folder / "pasted.txt").write_text(TEXT_A)  # what a fine-tune's pasted text leaves
    finally:
        demo.close()
    assert not folder.exists() and session.stop.is_set()
