"""Shared fixtures: tiny random models (never a download), their saved checkpoints, and the whole app
launched on a local port (``served``) for the end-to-end tests."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TypeVar

import pytest
import torch

import gpt2

T = TypeVar("T")

# Random configurations for parity tests: different depths, head counts, widths and vocabularies.
CONFIGS = {
    "tiny": gpt2.GPTConfig.preset("tiny"),
    "deep-narrow": gpt2.GPTConfig(block_size=32, vocab_size=1000, n_layer=4, n_head=4, n_embd=16),
    "one-head": gpt2.GPTConfig(block_size=48, vocab_size=3000, n_layer=1, n_head=1, n_embd=24),
    "wide": gpt2.GPTConfig(block_size=40, vocab_size=50257, n_layer=3, n_head=6, n_embd=96),
}


def random_model(config: gpt2.GPTConfig, seed: int = 0) -> gpt2.GPT2:
    """A GPT-2 with random weights, non-zero biases and LayerNorms so every parameter matters."""
    torch.manual_seed(seed)
    model = gpt2.GPT2(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def words(n_lines: int = 200) -> str:
    """Varied English-ish text, a few thousand tokens."""
    names = ["ROMEO", "JULIET", "NURSE", "FRIAR"]
    verbs = ["loves", "fears", "greets", "follows", "leaves"]
    return "".join(f"{names[i % 4]}:\nThe {i}th night {verbs[i % 5]} the moon and {i * 7 % 13} stars.\n\n"
                   for i in range(n_lines))


@pytest.fixture(scope="session")
def tiny_model() -> gpt2.GPT2:
    return random_model(CONFIGS["tiny"])


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_model) -> str:
    """The tiny model saved in the HF layout."""
    return str(tiny_model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def hf_tiny(tiny_dir):
    """The same weights loaded by transformers (the reference implementation)."""
    transformers = pytest.importorskip("transformers")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers.GPT2LMHeadModel.from_pretrained(tiny_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on shared
    cores, OpenMP's spinning threads make tiny models several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """No download from any case: the hub is "offline" and its cache empty (a listed hub model then fails
    fast with instructions, as on a machine without network)."""
    hub = pytest.importorskip("huggingface_hub.constants")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))
        yield


# ---------------------------------------------------------------- the app's context, as ``python app.py`` builds it


def make_ctx(model_dir: str | Path, **caps):
    """The app's context as ``app.make_context`` builds it (the picker's catalogue, ``model_dir`` offered as
    with ``--model``), with some server caps changed (``make_ctx(d, max_new_tokens=12)``)."""
    import app
    from ui.context import Caps

    return app.make_context(str(model_dir), Caps(**caps))


@pytest.fixture()
def app_ctx(tiny_dir):
    """A fresh app context on the tiny model with the server's default caps (each test its own store)."""
    return make_ctx(tiny_dir)


def drain(stream: Iterator[T]) -> T:
    """Drive a stream (a generation, a fine-tune) to its end; its last item."""
    last = None
    for last in stream:  # noqa: B007 - only the last item is wanted
        pass
    assert last is not None, "the stream yielded nothing"
    return last


# ---------------------------------------------------------------- the launched app


class Served(NamedTuple):
    """A running app: its URL, the key of its model in the picker, that model's directory and the
    server's ``AppContext`` (the tests run in the server's process, so they can look inside)."""

    url: str
    key: str
    model_dir: Path
    ctx: object  # ui.context.AppContext (ui is imported lazily: most tests never need gradio)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(model: str | Path) -> Iterator[Served]:
    """The app as ``app.main`` builds and launches it (queue, upload cap), with ``model`` offered as
    with ``--model``, on a free local port; closed on exit."""
    import app
    from ui.layout.page import build_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on shared cores, OpenMP's spinning threads make a tiny model several times slower
    try:
        ctx = app.make_context(str(model))
        demo = build_demo(ctx)
        port = free_port()
        app.launch(demo, ctx, prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        try:
            yield Served(f"http://127.0.0.1:{port}/", ctx.default_key, Path(model), ctx)
        finally:
            demo.close()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def launch_app():
    """``launched_app`` itself, for a module that needs the app with another model."""
    return launched_app


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """The app on a free local port with a tiny random model (one per test module)."""
    model_dir = tmp_path_factory.mktemp("served") / "tiny"
    torch.manual_seed(0)
    gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).save_pretrained(model_dir)
    with launched_app(model_dir) as s:
        yield s
