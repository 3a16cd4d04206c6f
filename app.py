"""GPT-2 Playground: ``python app.py [--model NAME_OR_DIR] [--precision fp32|bf16|int8]``, also a Space's entry point.

The default model is the bundled checkpoint (offline), or the hub's ``gpt2`` on a Space; ``--model`` or
the ``GPT2_MODEL`` environment variable chooses another. ``--precision`` (or ``GPT2_DEFAULT_PRECISION``)
sets every model's default precision (otherwise: int8 for hub models on a CPU, fp32 for checkpoints, the
GPU's dtype on a GPU; see ``ui.models``). ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` work as usual.
"""

from __future__ import annotations

try:  # on a ZeroGPU Space, ``spaces`` must come before anything that could touch CUDA (see ui/gpu.py)
    import spaces  # noqa: F401
except ImportError:
    pass

import argparse
import logging
import os
import sys

import gradio as gr

from gpt2 import native
from ui import memory, workdirs
from ui.context import AppContext, Caps
from ui.layout import limits, quotas, sessions
from ui.layout.page import CSS, HEAD, build_demo
from ui.models import BUNDLED, DEFAULT, PRECISIONS, ModelStore, catalog, key_for


def default_model() -> str:
    """``GPT2_MODEL`` if set; the real ``gpt2`` on a Space (which has network); else the bundled model."""
    return os.environ.get("GPT2_MODEL") or ("gpt2" if os.environ.get("SPACE_ID") else BUNDLED)


def make_context(model: str, caps: Caps | None = None, precision: str | None = None) -> AppContext:
    """The shared store with ``model`` offered (a hub id, a folder under checkpoints/ or any directory),
    every model's default ``precision`` (None: ``GPT2_DEFAULT_PRECISION``, else by model and device), and
    the server's caps (by default from the ``GPT2_*`` environment variables). Session folders left by
    stopped servers are removed, and this server's are removed when it exits (``ui.workdirs``)."""
    workdirs.start()
    entries = catalog(extra=model)
    key = key_for(entries, model) or model
    store = ModelStore(entries, precision=precision or os.environ.get("GPT2_DEFAULT_PRECISION"))
    return AppContext(store, default_key=key, caps=caps or Caps())


def launch(demo: gr.Blocks, ctx: AppContext, **options) -> None:
    """Queue and launch ``demo`` with the server's caps; ``options`` go to ``Blocks.launch`` (tests pass
    a host, a port and ``prevent_thread_lock``). Gradio's monitoring is off: its public
    ``/monitoring/summary`` would show every endpoint's traffic, of all users, to anyone. Each session's
    queue joins go through ``ui.layout.quotas`` first: one client cannot fill the queue."""
    demo.queue(max_size=ctx.caps.queue_size, default_concurrency_limit=2)
    demo.launch(max_file_size=ctx.caps.max_upload_bytes, state_session_capacity=ctx.caps.max_sessions, css=CSS,
                head=HEAD, enable_monitoring=False,
                app_kwargs={"middleware": limits.middleware(ctx.caps) + sessions.middleware(demo, ctx.caps)
                            + quotas.middleware(demo, ctx.caps)}, **options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(), help="hub id or checkpoint directory")
    parser.add_argument("--precision", choices=(DEFAULT, *PRECISIONS), default=None,
                        help="every model's default precision (default: GPT2_DEFAULT_PRECISION, else int8 for hub "
                             "models on a CPU, fp32 for checkpoints, the GPU's dtype on a GPU)")
    args = parser.parse_args(argv)
    memory.tune_allocator()  # before Gradio's threads: expired sessions' memory goes back to the system
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    native.available()  # compile (or find) the CPU decoding kernels now, logged, not in the first request
    try:
        ctx = make_context(args.model, precision=args.precision)
        demo = build_demo(ctx)
    except Exception as e:  # noqa: BLE001 - one clear line instead of a traceback at startup
        sys.exit(f"error: cannot start with model {args.model!r}: {e}")
    launch(demo, ctx)


if __name__ == "__main__":
    main()
