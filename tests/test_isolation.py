"""Session isolation, end to end: three API clients of one launched app (the shared ``served`` fixture,
conftest.py). A and B fine-tune different texts at the same time while C keeps using the base model;
afterwards each of A and B generates exactly what it would have generated had it fine-tuned alone, and
C (and any new client) still gets the base model's output.

"Alone" is a fresh client running the same fine-tune afterwards, so this also checks that fine-tuning
is deterministic for the same settings: the adapter starts from the run's seed, the batches of step s
depend only on the trainer's seed and s, and the tiny model has no dropout.

The app trains one run at a time (the /finetune event has ``concurrency_limit=1``), so of two runs
started together one waits in the queue while the other trains; generation is not in that queue, so
C's base-model generations and the first-finished client's fine-tuned generations run during the other
client's training. (Two runs training in the very same moment: test_logic_finetune.py, on the logic.)
"""

from __future__ import annotations

import time
import zipfile

import pytest
import torch
from safetensors.torch import load as load_safetensors

gradio_client = pytest.importorskip("gradio_client")

pytestmark = pytest.mark.slow

PROMPT = "The cat sat"
# /generate inputs after the prompt: max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop
SAMPLED = (24, 1.0, 0, 1.0, 1.0, 7, "")
TEXTS = {
    "a": " ".join(f"The cat number {i} sat on the mat." for i in range(120)),
    "b": "\n".join(f"ROMEO: O {i}, thy love is {i * 7} roses." for i in range(120)),
}


def client(served) -> gradio_client.Client:
    """A new API client: its own session (gradio_client keeps one session hash per Client)."""
    return gradio_client.Client(served.url, verbose=False)


def generate(cl: gradio_client.Client) -> str:
    text, _stats, _view = cl.predict(PROMPT, *SAMPLED, api_name="/generate")
    return text


def finetune_args(name: str) -> tuple:
    """/finetune inputs: text, file, column, mode, steps, lr, batch, block, rank, sample prompt, seed."""
    return TEXTS[name], None, "text", "LoRA", 4, 1e-2, 2, 16, 4, "The", 0


def weights(download: dict) -> dict[str, torch.Tensor]:
    """The tensors of a downloaded fine-tuned model (the zip's model.safetensors)."""
    with zipfile.ZipFile(download["value"]) as z:
        return load_safetensors(z.read("model.safetensors"))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_concurrent_fine_tunes_match_lone_runs_and_leave_the_base_alone(served):
    c = client(served)
    base = generate(c)
    clients = {name: client(served) for name in TEXTS}
    jobs = {name: cl.submit(*finetune_args(name), api_name="/finetune") for name, cl in clients.items()}
    during: list[str] = []  # C's generations while A and B fine-tune
    tuned: dict[str, str] = {}  # A's and B's generations with their fine-tuned models
    deadline = time.monotonic() + 180
    while not all(job.done() for job in jobs.values()):
        assert time.monotonic() < deadline, "the fine-tuning runs did not finish"
        during.append(generate(c))
        for name, job in jobs.items():
            if job.done() and name not in tuned:  # the other run may still be training
                tuned[name] = generate(clients[name])
    results = {name: job.result() for name, job in jobs.items()}
    downloads = {name: cl.predict(api_name="/download_finetuned") for name, cl in clients.items()}
    for name, cl in clients.items():
        tuned.setdefault(name, generate(cl))
        assert "Finished all 4 steps" in results[name][1]

    # Each alone: a fresh client runs the same fine-tune, with nobody else training.
    lone_results, lone_downloads, lone = {}, {}, {}
    for name in TEXTS:
        solo = client(served)
        lone_results[name] = solo.predict(*finetune_args(name), api_name="/finetune")
        lone_downloads[name] = solo.predict(api_name="/download_finetuned")
        lone[name] = generate(solo)

    assert tuned == lone  # same seed: what each would have generated alone
    for name in TEXTS:
        (_, _, before, after, _), (_, _, lone_before, lone_after, _) = results[name], lone_results[name]
        assert (before, after) == (lone_before, lone_after)  # the run's own before/after samples too
        assert same_weights(weights(downloads[name]), weights(lone_downloads[name]))  # and the very same model
    assert tuned["a"] != tuned["b"] and base not in tuned.values()
    assert not same_weights(weights(downloads["a"]), weights(downloads["b"]))

    assert during and set(during) == {base}  # C's base model while the others trained
    assert generate(c) == base and generate(client(served)) == base  # and after
    assert {name: generate(cl) for name, cl in clients.items()} == tuned  # A and B keep their models
