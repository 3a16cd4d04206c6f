"""The header's logic (``ui.logic.header``): switching models and precisions, and the fine-tuned switch."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_ctx

from ui.inputs import UserError
from ui.logic import header
from ui.models import ModelStore, model_bytes, size_text


def test_a_model_that_cannot_be_had_leaves_the_session_on_its_model(app_ctx, offline):
    session = app_ctx.new_session()
    key = session.model_key
    with pytest.raises(UserError, match=rf"Cannot download .*hf download.*{re.escape(key)}, stays loaded"):
        header.load_model(app_ctx, session, "distilgpt2")
    assert session.model_key == key == app_ctx.store.key(app_ctx.default_key)


def test_the_page_gets_a_message_and_its_picker_back(app_ctx, offline):
    """The picker goes back to the model in use, whose description stays; nothing is raised."""
    session = app_ctx.new_session()
    loading, failed = header.switch_model(app_ctx, session, "gpt2-medium")
    assert "Loading" in loading.info and failed.error and "gpt2-medium" in failed.error
    assert failed.picker["value"] == app_ctx.default_key and f"**{app_ctx.default_key}**" in failed.info
    assert failed.precision["value"] == "fp32"  # the precision picker, too, shows the model in use


def test_visitors_of_a_space_are_not_told_to_run_hf_download(app_ctx, offline, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "someone/gpt2-playground")
    *_, failed = header.switch_model(app_ctx, app_ctx.new_session(), "gpt2-medium")
    assert "hf download" not in failed.error and "try again later, or pick another model" in failed.error


def test_switching_to_an_offered_model_describes_it(app_ctx):
    session = app_ctx.new_session()
    *_, done = header.switch_model(app_ctx, session, app_ctx.default_key)
    assert done.error is None and "parameters" in done.info and done.finetuned is False


def test_the_fine_tuned_switch_stays_off_without_a_fine_tuned_model(app_ctx):
    session = app_ctx.new_session()
    value, message = header.use_finetuned(session, True)
    assert value is False and not session.use_finetuned and "Nothing fine-tuned yet" in message
    assert header.use_finetuned(session, False) == (False, None)


@pytest.mark.parametrize("model", [["gpt2"], None, "", 3, "/etc/passwd", "GPT2"])
def test_only_the_picker_keys_themselves_are_offered(app_ctx, model):
    """A list, nothing, a number, a path or another spelling: refused by name, with the choices."""
    session = app_ctx.new_session()
    with pytest.raises(UserError, match=r"^model .* is not one of the offered models\. Choose one of .*'gpt2'"):
        header.load_model(app_ctx, session, model)
    assert session.model_key == app_ctx.store.key(app_ctx.default_key)


# ---------------------------------------------------------------- precisions


def test_each_precision_is_loaded_for_this_session_only(app_ctx):
    """The description says the precision and the memory the loaded weights take; others keep theirs."""
    session, other = app_ctx.new_session(), app_ctx.new_session()
    name = app_ctx.default_key
    for asked, precision, dtype, words in [("int8", "int8", torch.float32, "int8 weights, fp32 activations"),
                                           ("bf16", "bf16", torch.bfloat16, "· bf16 ·"),
                                           ("default", "fp32", torch.float32, "· fp32 ·"),
                                           (" INT8 ", "int8", torch.float32, "int8 weights"),
                                           (None, "fp32", torch.float32, "· fp32 ·")]:
        info = header.load_model(app_ctx, session, name, asked)
        model = app_ctx.store.get(session.model_key)
        assert session.model_key == f"{name} ({precision})" and model.dtype == dtype
        assert model.quantization == ("int8" if precision == "int8" else None)
        assert words in info and f"**{name}**" in info and size_text(model_bytes(model)) in info
    assert other.model_key == f"{name} (fp32)" and app_ctx.store.get(other.model_key).quantization is None


@pytest.mark.parametrize("precision", ["fp16", "int4", "auto ", 8, True, ["int8"], {"int8": 1}])
def test_other_precisions_are_refused_by_name_with_the_choices(app_ctx, precision):
    session = app_ctx.new_session()
    with pytest.raises(UserError, match=r"^precision must be one of 'default', 'fp32', 'bf16', 'int8'; got "):
        header.load_model(app_ctx, session, app_ctx.default_key, precision)
    assert session.model_key == app_ctx.store.key(app_ctx.default_key)


def test_the_precision_picker_follows_the_model_and_lists_its_memory(app_ctx):
    session = app_ctx.new_session()
    loading, done = header.switch_precision(app_ctx, session, "int8")
    assert "in int8" in loading.info and done.error is None and "int8 weights" in done.info
    assert done.precision["value"] == "int8" and session.model_key.endswith(" (int8)")
    labels = dict((p, label) for label, p in done.precision["choices"])
    assert list(labels) == ["fp32", "bf16", "int8"] and labels["fp32"].endswith("· default")
    *_, back = header.switch_model(app_ctx, session, app_ctx.default_key)  # a model comes in its default
    assert back.precision["value"] == "fp32" and session.model_key == app_ctx.store.key(app_ctx.default_key)


def test_int8_is_not_offered_where_torch_has_no_kernel_for_it(tiny_dir, monkeypatch):
    def missing(device):
        raise ValueError("no int8 kernel")

    monkeypatch.setattr("ui.models.check_supported", missing)
    ctx = make_ctx(tiny_dir)
    assert ctx.store.precisions() == ("fp32", "bf16") and ctx.store.default_precision("gpt2") == "fp32"
    assert [p for _, p in ctx.store.choices("gpt2")] == ["fp32", "bf16"]
    session = ctx.new_session()
    with pytest.raises(UserError, match=r"precision 'int8' is not available on this server.*'default', 'fp32', "
                                        r"'bf16'\.$"):
        header.load_model(ctx, session, ctx.default_key, "int8")
    with pytest.raises(ValueError, match="int8 weights are not supported"):
        ModelStore(ctx.store.entries, precision="int8")  # an operator's int8 default: refused at startup


@pytest.mark.slow
def test_the_api_takes_a_precision_and_still_works_with_the_model_alone(served):
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(served.url, verbose=False)
    assert "int8 weights, fp32 activations" in client.predict(served.key, "int8", api_name="/load_model")
    assert "· fp32 ·" in client.predict(model=served.key, api_name="/load_model")  # the default: fp32 here
    with pytest.raises(gradio_client.exceptions.AppError, match=r"precision.*'default', 'fp32', 'bf16', 'int8'"):
        client.predict(served.key, "fp16", api_name="/load_model")
