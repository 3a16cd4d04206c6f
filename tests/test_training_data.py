"""training.data: formats, the prompt mask, splits, the token cache, and every bad-data message."""

import json

import numpy as np
import pytest
import torch
from conftest import words

from gpt2 import EOT_ID, encode
from gpt2.prompts import format_prompt
from training.data import IGNORE_INDEX, DataError, collate, prepare_data, tokenize_file


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_text_split_by_position(tmp_path, cache):
    path = tmp_path / "a.txt"
    path.write_text(words())
    data = prepare_data(path, block_size=16, cache_dir=cache)
    ids = np.asarray(encode(words()))
    n_val = round(len(ids) * 0.1)
    assert data.kind == "stream" and data.n_tokens == len(ids)
    np.testing.assert_array_equal(data.train.ids, ids[: len(ids) - n_val])  # first 90%
    np.testing.assert_array_equal(data.val.ids, ids[len(ids) - n_val :])  # last 10%
    x, y = data.train.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one
    windows = list(data.val.eval_batches(4))  # every non-overlapping validation window, once
    assert sum(len(x) for x, _ in windows) == len(data.val) == (n_val - 1) // 16


def test_tokens_are_cached(tmp_path, cache, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text(words())
    first = tokenize_file(path, cache_dir=cache)
    assert isinstance(first.ids, np.memmap) and first.ids.dtype == np.uint16

    def boom(*args):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("training.tokens._tokenize", boom)
    np.testing.assert_array_equal(tokenize_file(path, cache_dir=cache).ids, first.ids)
    path.write_text(words() + "changed")  # new content, new key
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_file(path, cache_dir=cache)


def test_csv_column(tmp_path, cache):
    path = tmp_path / "poems.csv"
    path.write_text("title,body\n" + "".join(f'"t{i}","{words(3)}"\n' for i in range(30)))
    data = prepare_data(path, block_size=16, column="body", cache_dir=cache)
    assert data.n_tokens == 30 * (len(encode(words(3))) + 1)  # each row ends with <|endoftext|>
    with pytest.raises(DataError, match=r"has no column 'poem'; its columns are: 'title', 'body'"):
        prepare_data(path, block_size=16, column="poem", cache_dir=cache)
    with pytest.raises(DataError, match=r"no 'text' column \(pass --column NAME\).*'title', 'body'"):
        prepare_data(path, block_size=16, cache_dir=cache)


def test_jsonl_text_records(tmp_path, cache):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"text": words(2)}) for _ in range(40)) + "\n")
    data = prepare_data(path, block_size=16, cache_dir=cache)
    assert data.kind == "stream"
    assert int((np.asarray(data.train.ids) == EOT_ID).sum() + (np.asarray(data.val.ids) == EOT_ID).sum()) == 40


def test_jsonl_lines_are_newline_separated_only(tmp_path, cache):
    path = tmp_path / "sep.jsonl"
    path.write_text('{"text": "a\u2028b"}\r\n' * 30 + '{"text": "c"}\n', encoding="utf-8")  # raw U+2028, CRLF
    tokens = tokenize_file(path, cache_dir=cache)
    assert int((np.asarray(tokens.ids) == EOT_ID).sum()) == 31


def test_instruction_records_mask_the_prompt(tmp_path, cache):
    recs = [{"instruction": f"Say {i}", "input": "loudly" if i % 2 else "", "output": f"{i}!" * (i % 3 + 1)}
            for i in range(20)]
    path = tmp_path / "i.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    data = prepare_data(path, block_size=64, cache_dir=cache)
    assert data.kind == "records" and len(data.train) == 18 and len(data.val) == 2
    batches = list(data.train.eval_batches(batch_size=len(data.train)))
    assert len(batches) == 1
    x, y = batches[0]
    for row, i in enumerate(data.train.indices):
        r = recs[i]
        prompt = encode(format_prompt(r["instruction"], r["input"]))
        answer = encode(r["output"]) + [EOT_ID]
        n = len(prompt) + len(answer) - 1
        assert x[row, :n].tolist() == (prompt + answer)[:-1]
        assert (y[row, : len(prompt) - 1] == IGNORE_INDEX).all()  # the prompt is not learned
        assert y[row, len(prompt) - 1 : n].tolist() == answer  # the answer and <|endoftext|> are
        assert (y[row, n:] == IGNORE_INDEX).all() and (x[row, n:] == EOT_ID).all()  # padding


def test_collate_pads_and_crops():
    a, b = np.arange(1, 6, dtype=np.uint16), np.arange(10, 30, dtype=np.uint16)
    x, y = collate([(a, 2), (b, 3)], block_size=8)
    assert x.shape == (2, 8)  # b cropped to block_size + 1 tokens
    assert x[0].tolist() == [1, 2, 3, 4] + [EOT_ID] * 4
    assert y[0].tolist() == [IGNORE_INDEX, 3, 4, 5] + [IGNORE_INDEX] * 4
    assert y[1].tolist() == [IGNORE_INDEX, IGNORE_INDEX] + list(range(13, 19))


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("empty.txt", b"", r"is empty"),
        ("blank.txt", b" \n\n  \n", r"is empty"),
        ("bin.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", r"looks like a binary file"),
        ("latin1.txt", "caf\u00e9\nna\u00efve\n".encode("latin-1"), r"not UTF-8 text: invalid byte 0xe9 on line 1"),
        ("latin2.txt", "ok\nstill ok\nna\u00efve\n".encode("latin-1"), r"invalid byte 0xef on line 3"),
        ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', r"bad.jsonl line 3: not valid JSON"),
        ("list.jsonl", b'{"text": "a"}\n["text"]\n', r"line 2: expected a JSON object, got list"),
        ("keys.jsonl", b'{"text": "a"}\n{"prompt": "b"}\n', r"line 2: a record needs a 'text' field.*\['prompt'\]"),
        ("mixed.jsonl", b'{"text": "a"}\n{"instruction": "b", "output": "c"}\n',
         r"line 2: a instruction record, but earlier records are text records"),
        ("type.jsonl", b'{"text": 3}\n', r"line 1: field 'text' must be a string"),
        ("tiny.txt", b"Too short.", r"too small: 3 tokens .* block_size \+ 1 = 65 tokens"),
        ("array.json", b'[{"text": "a"}]', r"one JSON record per line"),
    ],
)
def test_bad_data_messages(tmp_path, cache, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=match):
        prepare_data(path, block_size=64, cache_dir=cache)


def test_too_little_data_suggests_a_block_size(tmp_path, cache):
    path = tmp_path / "small.txt"
    path.write_text(words(10))  # ~180 tokens: 18 for validation
    with pytest.raises(DataError, match=r"use a block size of 1\d or less"):
        prepare_data(path, block_size=64, cache_dir=cache)
    assert prepare_data(path, block_size=12, cache_dir=cache).val is not None


def test_missing_file(tmp_path, cache):
    with pytest.raises(DataError, match="no such file"):
        prepare_data(tmp_path / "nope.txt", block_size=8, cache_dir=cache)
