"""The offline GPT-2 tokenizer."""

from __future__ import annotations

import subprocess
import sys

import gpt2


def test_known_ids():
    tok = gpt2.get_tokenizer()
    assert tok.encode("Hello world!") == [15496, 995, 0]
    assert tok.n_vocab == 50257 and tok.eot_token == gpt2.EOT_ID == 50256
    text = "GPT-2 sees ' tokens', numbers 12345 and émojis 🤖\n\tok"
    assert tok.decode(tok.encode(text)) == text


def test_endoftext_is_special_only_when_allowed():
    assert gpt2.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert 50256 not in gpt2.encode("a<|endoftext|>b", allow_special=False)


def test_display_labels_make_whitespace_and_stray_bytes_visible():
    labels = gpt2.token_display(gpt2.encode(" hi\n\tthere 🤖"))
    assert labels[:4] == ["␣hi", "↵", "⇥", "there"]
    assert any("<0x" in label for label in labels[4:])  # the emoji is split into byte tokens


def test_builds_with_no_network_and_no_tiktoken_cache(tmp_path):
    """A fresh process with tiktoken's download cache pointed at an empty dir and proxies that lead
    nowhere still builds the tokenizer: nothing is fetched."""
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY":
           "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    code = "import gpt2; print(gpt2.get_tokenizer().encode('Hello world!'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[15496, 995, 0]", out.stderr


def test_chat_prompt_ids_keep_typed_special_tokens_as_text():
    from gpt2 import prompts

    history = [("hi", "hello <|endoftext|> there")]
    ids = prompts.chat_prompt_ids(history, "say <|endoftext|>")
    assert ids.count(gpt2.EOT_ID) == 1  # only the separator after the first turn
    assert gpt2.get_tokenizer().decode(ids) == prompts.chat_prompt(history, "say <|endoftext|>")
    clean = [("hi", "hello")]
    assert prompts.chat_prompt_ids(clean, "x") == gpt2.encode(prompts.chat_prompt(clean, "x"))
