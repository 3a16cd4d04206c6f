"""The one adapter between widgets and tab logic.

Tab logic is plain functions ``fn(ctx, session, **values)`` (``ui.logic``): no Gradio, tested directly.
``Wiring.on`` connects one to an event. The widgets' values arrive by name (``inputs={"prompt": box}``),
so the order of an ``inputs`` list can never disagree with the function, and an API endpoint's parameters
are exactly those names. The server's ``AppContext`` and the browser session's ``Session`` come first
(the session is kept in its ``gr.State``); ``ui.updates.Update`` results become ``gr.update``; a
``UserError`` (or a checkpoint that cannot be loaded) becomes a ``gr.Error`` that the page shows. A
generator streams. Every event that may run the model (its logic reaches ``ctx.gpu``) says
``model=True`` and waits in one pool, ``MODEL_POOL``, so one client's clicks cannot start more model
jobs than the server has room for (``tests/test_wiring.py`` checks no such event is left out).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gradio as gr

import gpt2

from ..context import AppContext
from ..inputs import UserError
from ..updates import Update

Component = gr.components.Component
Listener = Callable[..., Any]  # an event to attach to: ``button.click``, ``slider.release``, ``event.then``...
MODEL_POOL = "model"  # the Gradio concurrency id of every event that may run the model


@contextlib.contextmanager
def as_gr_errors() -> Iterator[None]:
    """A refusal the user can act on, shown as Gradio shows errors (a toast, or the API's error)."""
    try:
        yield
    except (UserError, gpt2.CheckpointError) as e:
        raise gr.Error(str(e)) from None


def to_gradio(value: Any) -> Any:
    """A logic result as a Gradio output value."""
    return gr.update(**value.props) if isinstance(value, Update) else value


class Wiring:
    """Connects events to tab logic for one page (its context and its session state)."""

    def __init__(self, ctx: AppContext, state: gr.State) -> None:
        self.ctx, self.state = ctx, state

    def on(self, triggers: Listener | Sequence[Listener], fn: Callable, inputs: Mapping[str, Component] | None = None,
           outputs: Sequence[Component] = (), *, session: bool = True, api_name: str | None = None,
           model: bool = False, **options: Any) -> Any:
        """Run ``fn`` when ``triggers`` fire; returns the event (for ``.then``/``.success``).

        ``fn(ctx, session, **values)`` (``fn(ctx, **values)`` with ``session=False``) returns one value per
        output, or yields them. ``api_name`` publishes the event as an API endpoint under that name;
        other events stay private. ``model=True``: ``fn`` may run the model, so the event waits in
        ``MODEL_POOL`` (at most ``caps.model_concurrency`` at once). ``options`` go to Gradio
        (``trigger_mode``, another concurrency pool...).
        """
        kwargs = dict(inputs or {})
        outs = list(outputs)
        if session:
            kwargs["session"] = self.state
            outs.append(self.state)  # a session created by this call is kept
        run = self._adapt(fn, session, len(outputs))
        options.update(api_name=api_name) if api_name else options.setdefault("api_visibility", "private")
        if model:
            options.update(concurrency_limit=self.ctx.caps.model_concurrency, concurrency_id=MODEL_POOL)
        if isinstance(triggers, Sequence):
            return gr.on(list(triggers), run, inputs_kwargs=kwargs, outputs=outs, **options)
        return triggers(run, inputs_kwargs=kwargs, outputs=outs, **options)

    def _adapt(self, fn: Callable, session: bool, n_outputs: int) -> Callable:
        def call(values: dict) -> tuple[Any, Any]:
            if not session:
                return None, fn(self.ctx, **values)
            s = self.ctx.session(values.pop("session"))
            return s, fn(self.ctx, s, **values)

        def outputs(result: Any, s: Any) -> Any:
            values = [result] if n_outputs == 1 else list(result) if n_outputs else []
            if len(values) != n_outputs:
                raise TypeError(f"{fn.__name__} returned {len(values)} values for {n_outputs} outputs")
            values = [to_gradio(v) for v in values]
            if session:
                values.append(s)
            return values[0] if len(values) == 1 else tuple(values) if values else None

        if inspect.isgeneratorfunction(fn):
            def run(**values):  # Gradio streams generator functions: this must be one too
                with as_gr_errors():
                    s, items = call(values)
                    with contextlib.closing(items):  # a closed page ends the logic's work at once
                        for item in items:
                            yield outputs(item, s)
        else:
            def run(**values):
                with as_gr_errors():
                    s, result = call(values)
                    return outputs(result, s)
        run.__name__, run.__doc__ = fn.__name__, fn.__doc__  # the API page describes the endpoint with it
        return run
