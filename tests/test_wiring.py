"""The adapter between widgets and tab logic (``ui.layout.wiring``): values by name, the session first
and kept, ``Update`` as ``gr.update``, ``UserError`` as ``gr.Error``, generators streamed; and every event
of the page that may run the model waits in the one model pool."""

from __future__ import annotations

import inspect

import gradio as gr
import pytest
from conftest import make_ctx

from ui.inputs import UserError, integer
from ui.layout.page import build_demo
from ui.layout.wiring import MODEL_POOL, Wiring
from ui.session import Session
from ui.updates import update


def count(ctx, session, text, times):
    """Repeat ``text``."""
    n = integer("times", times, 0, 5)
    return text * n, update(maximum=n)


def stream(ctx, session, text):
    for i in range(3):
        yield f"{text}{i}"


@pytest.fixture()
def page(app_ctx):
    with gr.Blocks() as demo:
        state = gr.State(None)
        wire = Wiring(app_ctx, state)
        text, times = gr.Textbox(label="text"), gr.Number(2, label="times")
        out, slider = gr.Textbox(label="repeated"), gr.Slider(label="count")
        button = gr.Button()
        wire.on(button.click, count, {"text": text, "times": times}, [out, slider], api_name="count")
        wire.on(button.click, stream, {"text": text}, [out])
    return demo, wire


def test_values_arrive_by_name_and_the_api_uses_those_names(page):
    demo, _ = page
    endpoint = demo.get_api_info()["named_endpoints"]["/count"]
    assert [p["parameter_name"] for p in endpoint["parameters"]] == ["text", "times"]
    assert [r["label"] for r in endpoint["returns"]] == ["repeated", "count"]  # the session state is not listed
    assert len(demo.get_api_info()["named_endpoints"]) == 1  # events without an api_name stay private


def test_results_become_gradio_values_and_the_session_is_kept(page):
    _, wire = page
    run = wire._adapt(count, True, 2)
    text, slider, session = run(text="ab", times=2.0, session=None)
    assert text == "abab" and slider == gr.update(maximum=2) and isinstance(session, Session)
    assert run(text="a", times=1, session=session)[2] is session


def test_user_errors_become_gr_errors(page):
    _, wire = page
    with pytest.raises(gr.Error, match="times must be a whole number from 0 to 5; got 9"):
        wire._adapt(count, True, 2)(text="a", times=9, session=None)
    with pytest.raises(TypeError, match="returned 1 values for 2 outputs"):
        wire._adapt(lambda ctx, session: ("x",), True, 2)(session=None)

    def refuses(ctx, session):
        raise UserError("no")
        yield

    with pytest.raises(gr.Error, match="no"):
        next(wire._adapt(refuses, True, 1)(session=None))


def test_generators_stream(page):
    _, wire = page
    run = wire._adapt(stream, True, 1)
    assert inspect.isgeneratorfunction(run)  # Gradio streams only generator functions
    assert [text for text, _ in run(text="x", session=None)] == ["x0", "x1", "x2"]


# ---------------------------------------------------------------- the model pool


def referenced(fn) -> tuple[set[str], list]:
    """The global and attribute names ``fn``'s code reads (its nested functions' too), and the app's
    functions those names reach: globals, closure variables, ``module.function`` of ``ui`` modules and the
    methods of ``ui`` classes it names."""
    names, codes = set(), [fn.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes += [c for c in code.co_consts if inspect.iscode(c)]
    scope = {**fn.__globals__, **inspect.getclosurevars(fn).nonlocals}
    values = [scope[n] for n in names | set(fn.__code__.co_freevars) if n in scope]
    values += [getattr(m, n, None) for m in values if inspect.ismodule(m) and m.__name__.startswith("ui.")
               for n in names]
    values += [f for c in values if inspect.isclass(c) and c.__module__.startswith("ui.")  # a class's methods
               for f in vars(c).values()]
    return names, [v for v in values if inspect.isfunction(v) and v.__module__.startswith("ui.")]


def runs_model(fn, seen: set | None = None) -> bool:
    """Whether ``fn`` may run the model: it reads ``*.gpu.call``/``*.gpu.iterate``, or calls a function of
    the project that does (found by name, so it errs on the side of "may")."""
    seen = set() if seen is None else seen
    seen.add(fn)
    names, callees = referenced(fn)
    if "gpu" in names and names & {"call", "iterate"}:
        return True
    return any(runs_model(f, seen) for f in callees if f not in seen)


def test_every_event_that_may_run_the_model_waits_in_the_model_pool(tiny_dir):
    """One pool bounds all model work (however many tabs, follow-ups and endpoints one client triggers);
    fine-tuning has its own pool of one. Events that never run the model stay out of the pool."""
    ctx = make_ctx(tiny_dir, model_concurrency=3)
    events = [(f.fn.__name__, runs_model(f.fn), (f.concurrency_id, f.concurrency_limit))
              for f in build_demo(ctx).fns.values() if f.fn is not None]
    assert {"generate", "compare", "attention", "show", "redraw", "replay", "refresh", "generated", "open_latest",
            "step_probabilities", "show_record", "reset", "follow", "text_probabilities", "use_generation",
            "export", "finetune"} <= {name for name, runs, _ in events if runs}  # the search finds known model work
    assert [pool for name, _, pool in events if name == "finetune"] == [("train", 1)]
    wrong = [(name, pool) for name, runs, pool in events if name != "finetune" and runs != (pool == (MODEL_POOL, 3))]
    assert not wrong, f"events in the wrong pool (name, (pool, limit)): {wrong}"
