"""The Fine-tune tab's layout: data (with a preview, and the example instruction set) and settings, the live loss
plot, before/after samples, the download, and "Chat with it" once a model is fine-tuned."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..logic import finetune as logic
from ..logic import finetune_data as files
from . import widgets
from .links import MODEL_CHANGED, open_tab, tab_selected

# The download's second half: once the zip is made, the browser saves it (its "Save" button stays, to save again).
SAVE_ZIP = """(file) => {
    if (!file?.url) return;
    const a = Object.assign(document.createElement("a"), {href: file.url, download: file.orig_name || ""});
    document.body.appendChild(a);
    a.click();
    a.remove();
}"""


@dataclass
class Controls:
    """The run's inputs, by the /finetune parameter names."""

    inputs: dict[str, gr.components.Component]
    start: gr.Button
    stop: gr.Button
    progress: gr.Markdown
    example: gr.Button
    preview: gr.HTML


def _data_column(page) -> Controls:
    caps = page.ctx.caps
    text = gr.Textbox(label="Training text", lines=8, placeholder="Paste text to train on…")
    file = gr.File(label=f"…or upload a .txt, .csv or .jsonl file (at most {files.size_text(caps.max_upload_bytes)}; "
                         "used instead of the text)", file_types=list(files.EXTENSIONS), type="filepath")
    column = gr.Textbox("text", label="CSV column", info="for .csv files: the column holding the text")
    example = gr.Button("Try the example instruction set (questions and answers written for this model)",
                        size="sm")
    preview = gr.HTML()  # how training sees the data: filled when data is pasted, uploaded or loaded
    with gr.Row():
        start = gr.Button("Start fine-tuning", variant="primary", scale=2, min_width=180)
        stop = gr.Button("Stop", scale=1, min_width=80)
    progress = gr.Markdown("Paste text or upload a file, then press **Start fine-tuning**.", label="progress")
    return Controls({"text": text, "file": file, "column": column}, start, stop, progress, example, preview)


def _settings_column(page) -> dict[str, gr.components.Component]:
    ctx = page.ctx
    base = ctx.base(ctx.default_key)
    d, context = logic.fitting_defaults(ctx, base), base.config.block_size
    return {
        "mode": widgets.radio(list(logic.MODES), value="LoRA", label="Method",
                              info="LoRA: a small adapter on the shared model (light); full: every weight of a copy"),
        "steps": widgets.slider(1, ctx.caps.max_train_steps, value=d.steps, step=1, label="steps",
                                info=logic.steps_info(ctx.caps.max_train_seconds, d.steps, d.batch_size, d.block_size)),
        "learning_rate": widgets.number(logic.DEFAULT_LR["LoRA"], label="learning rate", info="above 0, at most 1",
                                        allowed="Give a number above 0, at most 1."),
        "batch_size": widgets.slider(1, logic.MAX_BATCH, value=d.batch_size, step=1, label="batch size"),
        # checked by the handler: it knows the session's model, whose context may differ from this one's
        "block_size": widgets.slider(logic.MIN_BLOCK, context, value=d.block_size, step=1, label="block size (tokens)",
                                     info=logic.block_info(context), checked_by_handler=True),
        "lora_rank": widgets.slider(1, logic.MAX_RANK, value=logic.DEFAULT_RANK, step=1, label="LoRA rank"),
    }


def build(page) -> None:
    """Lay out the tab and wire it (see ``ui.layout.page``)."""
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            controls = _data_column(page)
        with gr.Column(scale=2, min_width=300):
            settings = _settings_column(page)
    plot = gr.Plot(label="loss")
    with gr.Row():
        sample_prompt = gr.Textbox(label="Sample prompt", placeholder="blank = the start of your data", scale=3,
                                   min_width=240)
        seed = widgets.number(0, label="sample seed", info="blank or -1 = random", scale=1, min_width=140,
                              allowed="Give a whole number, or leave it blank (or -1) for a random seed.")
    with gr.Row():
        before = gr.Textbox(label="Before (base model)", lines=6, interactive=False, min_width=300)
        after = gr.Textbox(label="After (fine-tuned, same seed)", lines=6, interactive=False, min_width=300)
    with gr.Row():
        prepare = gr.Button("Download the fine-tuned model (.zip, Hugging Face layout)", visible=False, min_width=240)
        download = gr.DownloadButton("fine-tuned model (.zip)", visible=False, min_width=200)  # labelled when packed
        chat = gr.Button("Chat with it ›", variant="primary", visible=False, min_width=160)
    fitted = gr.State(page.ctx.store.key(page.ctx.default_key))  # the model whose defaults the sliders show
    inputs = {**controls.inputs, **settings, "sample_prompt": sample_prompt, "seed": seed}
    _wire(page, controls, inputs, [plot, controls.progress, before, after, download], prepare, fitted)
    _wire_data(page, controls, inputs, chat)


def _wire_data(page, controls: Controls, inputs: dict, chat: gr.Button) -> None:
    """The preview, the example set's button and "Chat with it" (shown while a fine-tuned model exists)."""
    wire, data = page.wire, {"text": inputs["text"], "file": inputs["file"]}
    # the file's .change: also when the example's button fills it; the text's .blur: not a request a keystroke
    wire.on([inputs["file"].change, inputs["text"].blur], files.preview, data, [controls.preview], session=False,
            queue=False, show_progress="hidden", trigger_mode="always_last")
    wire.on(controls.example.click, files.example, {},
            [inputs[k] for k in ("file", "mode", "learning_rate", "steps", "batch_size", "block_size",
                                 "sample_prompt")], queue=False)
    page.links.follow(MODEL_CHANGED, lambda listener: wire.on(listener, files.chat_ready, {}, [chat], queue=False,
                                                              show_progress="hidden"))
    chosen = wire.on(chat.click, files.chat_with_it, {}, [], queue=False)  # the switch first, then the tab
    page.links.emit(MODEL_CHANGED, chosen.success)  # the header's switch and the Chat tab's hint follow
    page.links.emit(open_tab("chat"), chosen.success)


def _wire(page, controls: Controls, inputs: dict, outputs: list, prepare: gr.Button, fitted: gr.State) -> None:
    wire, download = page.wire, outputs[-1]
    wire.on(inputs["mode"].input, logic.learning_rate, {"mode": inputs["mode"]}, [inputs["learning_rate"]],
            session=False, queue=False)
    train = wire.on(controls.start.click, logic.finetune, inputs, outputs, api_name="finetune",
                    concurrency_limit=1, concurrency_id="train",  # one run at a time; others see their place
                    show_progress="full", show_progress_on=[controls.progress])
    wire.on(controls.stop.click, logic.stop, queue=False)
    page.links.emit(MODEL_CHANGED, train.then)  # the header's switch and this tab's controls follow

    def refit(listener):
        return wire.on(listener, logic.refit, {"fitted": fitted},
                       [inputs["steps"], inputs["batch_size"], inputs["block_size"], fitted, prepare],
                       queue=False, show_progress="hidden")

    page.links.follow(MODEL_CHANGED, refit)
    page.links.follow(tab_selected("finetune"), refit)
    packed = wire.on(prepare.click, files.export, {}, [download], api_name="download_finetuned", model=True,
                     show_progress_on=[prepare])
    packed.success(None, [download], None, js=SAVE_ZIP, queue=False)
