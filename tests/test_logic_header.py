"""The header's logic (``ui.logic.header``): switching models and the fine-tuned switch."""

from __future__ import annotations

import pytest

from ui.inputs import UserError
from ui.logic import header


def test_a_model_that_cannot_be_had_leaves_the_session_on_its_model(app_ctx, offline):
    session = app_ctx.new_session()
    with pytest.raises(UserError, match=rf"Cannot download .*hf download.*{app_ctx.default_key}, stays loaded"):
        header.load_model(app_ctx, session, "distilgpt2")
    assert session.model_key == app_ctx.default_key


def test_the_page_gets_a_message_and_its_picker_back(app_ctx, offline):
    """The picker goes back to the model in use, whose description stays; nothing is raised."""
    session = app_ctx.new_session()
    loading, failed = header.switch_model(app_ctx, session, "gpt2-medium")
    assert "Loading" in loading.info and failed.error and "gpt2-medium" in failed.error
    assert failed.picker["value"] == app_ctx.default_key and f"**{app_ctx.default_key}**" in failed.info


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
    assert session.model_key == app_ctx.default_key
