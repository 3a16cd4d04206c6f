"""Checkpoint I/O: the HF layout both ways, the official hub layout, atomic saves, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import gpt2
from gpt2.weights import resolve_device_dtype

transformers = pytest.importorskip("transformers")
IDS = torch.randint(0, 50257, (2, 30))


def logits(model):
    with torch.no_grad():
        return model(IDS) if isinstance(model, gpt2.GPT2) else model(IDS).logits


def test_our_checkpoint_loads_in_transformers(tiny_model, tiny_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_dir).eval()
    torch.testing.assert_close(logits(hf), logits(tiny_model), atol=1e-4, rtol=0)


def test_round_trip_is_exact(tiny_model, tiny_dir):
    loaded = gpt2.GPT2.from_pretrained(tiny_dir)
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32 and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_transformers_save_pretrained_layout_loads(tiny_model, hf_tiny, tmp_path):
    hf_tiny.save_pretrained(tmp_path)
    assert "transformer.wte.weight" in load_file(tmp_path / "model.safetensors")
    torch.testing.assert_close(logits(gpt2.GPT2.from_pretrained(tmp_path)), logits(tiny_model), atol=1e-5, rtol=0)


def test_official_hub_layout_loads(tiny_model, tiny_dir, tmp_path):
    """The openai-community repos: no 'transformer.' prefix, old attn.bias/masked_bias buffers."""
    state = load_file(f"{tiny_dir}/model.safetensors")
    official = {k.removeprefix("transformer."): v for k, v in state.items()}
    for i in range(tiny_model.config.n_layer):
        official[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        official[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(official, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(tiny_model.config.to_hf()))
    torch.testing.assert_close(logits(gpt2.GPT2.from_pretrained(tmp_path)), logits(tiny_model))


def test_save_in_half_precision_and_load_in_fp32(tiny_model, tmp_path):
    out = tiny_model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    loaded = gpt2.GPT2.from_pretrained(out)
    assert loaded.dtype == torch.float32
    torch.testing.assert_close(logits(loaded), logits(tiny_model), atol=2e-2, rtol=0)
    half = gpt2.GPT2.from_pretrained(out, dtype="float16")
    assert half.dtype == torch.float16


def test_save_replaces_a_checkpoint_and_keeps_other_files(tiny_model, tmp_path):
    out = tmp_path / "run"
    tiny_model.save_pretrained(out)
    (out / "README.md").write_text("card")
    other = gpt2.GPT2(tiny_model.config)
    other.save_pretrained(out)
    assert (out / "README.md").read_text() == "card"
    assert torch.equal(gpt2.GPT2.from_pretrained(out).transformer.wte.weight, other.transformer.wte.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp or old dirs left behind


def test_killed_mid_save_leaves_the_previous_checkpoint(tiny_dir, tmp_path):
    """A process killed while writing never leaves a half-written directory under the target name."""
    import shutil

    target = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, target)
    code = f"""
import gpt2, safetensors.torch as st, time
def slow(*a, **k):
    print("writing", flush=True); time.sleep(60)
st.save_file = slow
import gpt2.weights; gpt2.weights.save_file = slow
gpt2.GPT2(gpt2.GPTConfig.preset("tiny")).save_pretrained({str(target)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    loaded = gpt2.GPT2.from_pretrained(target)
    assert torch.equal(loaded.transformer.wte.weight, gpt2.GPT2.from_pretrained(tiny_dir).transformer.wte.weight)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt.tmp-")]
    assert len(left) == 1  # the killed save's temporary directory
    # The next save of the same checkpoint removes it: its writer is a process of this machine that is gone.
    newer = gpt2.GPT2(gpt2.GPTConfig.preset("tiny"))
    newer.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert torch.equal(gpt2.GPT2.from_pretrained(target).transformer.wte.weight, newer.transformer.wte.weight)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]  # no bookkeeping


def test_saving_removes_only_stale_temporary_directories(tiny_model, tmp_path):
    """Stale: untouched for an hour, or written by a process of this machine that has exited. A live
    writer's directory, a recent one without a record, one from another host and other targets' stay."""
    import os
    import socket

    from gpt2.weights import STALE_TEMP_S

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # the PID of a process that has exited
    host = socket.gethostname()
    writers = {
        "dead-writer": {"host": host, "pid": int(dead)},
        "live-writer": {"host": host, "pid": os.getpid()},
        "other-host": {"host": host + "-elsewhere", "pid": int(dead)},
        "no-record": None,
        "old": {"host": host, "pid": os.getpid()},
    }
    for name, writer in writers.items():
        d = tmp_path / f".run.tmp-{name}"
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
        if writer is not None:
            (d / ".writer.json").write_text(json.dumps(writer))
    (tmp_path / ".other.tmp-dead-writer").mkdir()  # another checkpoint's: never touched
    (tmp_path / ".other.tmp-dead-writer" / ".writer.json").write_text(json.dumps(writers["dead-writer"]))
    old = time.time() - STALE_TEMP_S - 60
    for p in [tmp_path / ".run.tmp-old", *(tmp_path / ".run.tmp-old").iterdir()]:
        os.utime(p, (old, old))
    tiny_model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.tmp-dead-writer", ".run.tmp-live-writer", ".run.tmp-no-record", ".run.tmp-other-host", "run"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_config", "no config.json"),
        ("missing_weights", "no model.safetensors"),
        ("pickle_only", "never loaded"),
        ("bad_json", "not a valid GPT-2 config"),
        ("wrong_type", "model_type"),
        ("wrong_shape", "wrong shapes"),
        ("missing_key", "missing"),
        ("not_safetensors", "not a readable safetensors"),
    ],
)
def test_malformed_directories_say_what_is_wrong(tiny_dir, tmp_path, setup, message):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    state = load_file(d / "model.safetensors")
    if setup == "missing_config":
        (d / "config.json").unlink()
    elif setup == "missing_weights":
        (d / "model.safetensors").unlink()
    elif setup == "pickle_only":
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif setup == "bad_json":
        (d / "config.json").write_text("{not json")
    elif setup == "wrong_type":
        (d / "config.json").write_text(json.dumps(cfg | {"model_type": "llama"}))
    elif setup == "wrong_shape":
        (d / "config.json").write_text(json.dumps(cfg | {"n_embd": 64}))
    elif setup == "missing_key":
        del state["transformer.h.1.mlp.c_fc.weight"]
        save_file(state, d / "model.safetensors")
    elif setup == "not_safetensors":
        (d / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(gpt2.CheckpointError, match=message):
        gpt2.GPT2.from_pretrained(d)


def test_unknown_name_lists_what_is_accepted():
    with pytest.raises(gpt2.CheckpointError, match="Unknown model 'gpt-7'.*gpt2-medium"):
        gpt2.GPT2.from_pretrained("gpt-7")
    with pytest.raises(gpt2.CheckpointError, match="no such directory"):
        gpt2.GPT2.from_pretrained("./checkpoints/does-not-exist")


def test_hub_model_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(gpt2.CheckpointError, match="hf download openai-community/gpt2-medium"):
        gpt2.GPT2.from_pretrained("gpt2-medium")
    assert time.monotonic() - t < 10


def test_hub_model_loads_from_the_cache_without_network(monkeypatch, tmp_path, tiny_dir):
    """A hub id found in the local HF cache loads offline (as it would after one download)."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = tmp_path / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_dir}/{f}", snap / f)
    (tmp_path / "models--openai-community--gpt2" / "refs").mkdir()
    (tmp_path / "models--openai-community--gpt2" / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    model = gpt2.GPT2.from_pretrained("gpt2")
    assert model.config.n_layer == 2


def test_device_and_dtype_defaults():
    device, dtype = resolve_device_dtype()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dtype == (torch.float32 if device.type == "cpu" else dtype)
    assert resolve_device_dtype("cpu", "bf16")[1] == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_device_dtype("cpu", "float8")
    with pytest.raises(ValueError, match="device"):
        resolve_device_dtype("nonsense")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_half_precision_generation_matches_fp32(tiny_dir):
    cuda = gpt2.GPT2.from_pretrained(tiny_dir)
    assert cuda.device.type == "cuda" and cuda.dtype in (torch.bfloat16, torch.float16)
    cpu = gpt2.GPT2.from_pretrained(tiny_dir, device="cpu")
    ids = IDS.cuda()
    with torch.no_grad():
        torch.testing.assert_close(cuda(ids).float().cpu(), cpu(IDS), atol=0.1, rtol=0.05)
    params = gpt2.SamplingParams(temperature=0.8, max_new_tokens=20, seed=1, stop_at_eos=False)
    a = [s.token_id for s in gpt2.generate(cuda, [1, 2, 3], params)]
    assert a == [s.token_id for s in gpt2.generate(cuda, [1, 2, 3], params)] and len(a) == 20
