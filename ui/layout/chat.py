"""The Chat tab's layout: the conversation, a message box with Send, Stop, Regenerate and Clear, and the
Generate tab's sampler settings (same names). ``/chat`` takes the message first, then the conversation
and the settings; its first output is the reply."""

from __future__ import annotations

import gradio as gr

from ..logic import chat as logic
from . import widgets
from .links import MODEL_CHANGED, open_tab, tab_selected


def _settings(caps) -> dict[str, gr.components.Component]:
    """The sampler settings by their ``/generate`` names (cooler by default, and a random seed: Regenerate
    then gives another reply)."""
    a = widgets.sampler_widgets(temperature=logic.TEMPERATURE)
    max_new = widgets.slider(1, caps.max_new_tokens, value=min(logic.MAX_NEW_TOKENS, caps.max_new_tokens), step=1,
                             label="max new tokens", info="the reply's length at most")
    seed = widgets.number(value=-1, label="seed", info="-1 or blank = random",
                          allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
    stop = gr.Textbox("", label="stop sequences", lines=2, placeholder="one per line; a reply also ends at "
                      "<|endoftext|> and at the next '### ' header")
    with gr.Accordion("Advanced samplers", open=False):
        advanced = widgets.advanced_sampler_widgets()
    return {"max_new_tokens": max_new, **a.inputs(), "seed": seed, "stop": stop, **advanced}


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    wire = page.wire
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            notice = gr.Markdown(f"> {logic.HINT}", label="notice", elem_id="chat-notice")
            conversation = gr.Chatbot(label="conversation", elem_id="chat-conversation", height=420,
                                      feedback_options=None, buttons=["copy"],
                                      placeholder="Each message is one turn of the instruction format "
                                                  "(### Instruction: … ### Response: …).")
            message = gr.Textbox(label="message", placeholder="Type a message and press Enter…",
                                 elem_id="chat-message")
            gr.Examples([[e] for e in logic.EXAMPLES], inputs=[message], label="Examples")
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                stop = gr.Button("Stop", elem_id="chat-stop")
                regenerate = gr.Button("Regenerate", elem_id="chat-regenerate")
                clear = gr.Button("Clear", elem_id="chat-clear")
        with gr.Column(scale=2, min_width=300):
            values = _settings(page.ctx.caps)
    reply = gr.Textbox(label="reply", visible=False)  # /chat's first output: the reply alone
    api = gr.Button(visible=False)  # /chat's trigger: the page sends from `pending` (its box cleared at once)
    pending, cleared = gr.State(""), gr.State(False)  # the message being answered; Clear pressed during it
    outputs = [reply, conversation, notice]

    wire.on(api.click, logic.chat, {"message": message, "history": conversation, **values}, outputs,
            api_name="chat", model=True, show_progress_on=[notice])
    taken = wire.on([message.submit, send.click], lambda ctx, message: ("", message, False), {"message": message},
                    [message, pending, cleared], session=False, queue=False)
    sent = wire.on(taken.then, logic.chat, {"message": pending, "history": conversation, **values}, outputs,
                   model=True, show_progress_on=[notice])
    sent.failure(lambda text: text, [pending], [message], queue=False, api_visibility="private")  # keep a refused one
    again = wire.on(regenerate.click, logic.regenerate, {"history": conversation, **values}, outputs, model=True,
                    show_progress_on=[notice])
    wire.on(stop.click, logic.stop, queue=False)
    # Clear (or the conversation's own bin) stops a reply in progress; when it has ended, it is cleared again
    wire.on([clear.click, conversation.clear], logic.clear, {}, [*outputs, cleared], queue=False)
    for event in (sent, again):
        wire.on(event.then, logic.settle, {"cleared": cleared}, [*outputs, cleared], queue=False)

    # The hint follows the model in use: when the tab opens, when another tab opens it (the Fine-tune tab's
    # "Chat with it ›"), and when the header's model or switch changes.
    for name in (tab_selected("chat"), open_tab("chat"), MODEL_CHANGED):
        page.links.follow(name, lambda listener: wire.on(listener, logic.hint, {}, [notice], queue=False))
