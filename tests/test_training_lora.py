"""training.lora: one shared base, many cheap adapters; merge, save/load, thread isolation."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gpt2 import GPT2, GPTConfig, SamplingParams, generate
from training import (
    LoRAAdapter,
    LoRAConfig,
    LoRALinear,
    TrainConfig,
    install_lora,
    load_adapter,
    merge_lora,
    prepare_data,
    save_adapter,
    train,
    use_adapter,
    with_adapter,
)
from training.lora import TARGETS

IDS = torch.tensor([[464, 3290, 318, 257, 1332, 11, 290, 340]])


def base_model() -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPTConfig.preset("tiny", block_size=32)).eval()


def random_adapter(base: GPT2, seed: int, **kw) -> LoRAAdapter:
    """An adapter with non-zero B (a fresh one is a no-op by design)."""
    adapter = LoRAAdapter(base, LoRAConfig(rank=4, alpha=8, **kw), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in adapter.lora_B.values():
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return adapter


def test_install_is_idempotent_and_keeps_the_model():
    base = base_model()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        plain = base(IDS)
    assert install_lora(install_lora(base)) is base
    wrapped = [n for n, m in base.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 4 * base.config.n_layer
    assert base.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert not any(p.requires_grad for p in base.parameters())  # frozen: backward never writes into it
    with torch.no_grad():
        assert torch.equal(base(IDS), plain)  # no adapter active: the plain model
        with use_adapter(LoRAAdapter(base)):
            assert torch.allclose(base(IDS), plain)  # a fresh adapter (B = 0) changes nothing


def test_merged_model_equals_base_plus_adapter():
    base = install_lora(base_model())
    adapter = random_adapter(base, seed=1, targets=("attn.c_attn", "mlp.c_proj"))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with torch.no_grad():
        plain = base(IDS)
        with use_adapter(adapter):
            adapted = base(IDS)
        merged = merge_lora(base, adapter)
        assert not torch.allclose(adapted, plain, atol=1e-3)
        torch.testing.assert_close(merged(IDS), adapted, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # base untouched
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())  # a plain GPT2
    changed = {k for k, v in merged.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"transformer.h.{i}.{t}.weight" for i in range(2) for t in ("attn.c_attn", "mlp.c_proj")}


def test_save_and_load_adapter(tmp_path):
    base = install_lora(base_model())
    adapter = random_adapter(base, seed=2, dropout=0.1)
    save_adapter(adapter, tmp_path / "ad", base_model="tiny")
    assert (tmp_path / "ad" / "adapter_model.safetensors").stat().st_size < 60_000  # the base is ~7 MB
    loaded = load_adapter(tmp_path / "ad", base)
    assert loaded.config == adapter.config
    with torch.no_grad(), use_adapter(adapter):
        a = base(IDS)
    with torch.no_grad(), use_adapter(loaded):
        assert torch.equal(base(IDS), a)


def test_lora_training_leaves_the_shared_base_alone(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("".join(f"Line {i}: to be or not to be, {i % 7} times.\n" for i in range(300)))
    data = prepare_data(text, 32, cache_dir=tmp_path / "c")
    base = install_lora(base_model())
    before = {k: v.clone() for k, v in base.state_dict().items()}
    adapter = LoRAAdapter(base, LoRAConfig(rank=4, dropout=0.1), seed=0)
    records = list(train(base, data, TrainConfig(steps=30, batch_size=4, lr=1e-2, eval_interval=0), adapter=adapter))
    assert records[-1].train_loss < records[0].train_loss - 0.2  # a random base: only the projections adapt
    assert not base.training and all(p.grad is None for p in base.parameters())
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert any(b.abs().sum() > 0 for b in adapter.lora_B.values())


def test_adapters_are_per_thread():
    """Two users generate at once on one base, each with their own adapter (or none)."""
    base = install_lora(base_model())
    adapters = [random_adapter(base, seed=s) for s in (3, 4)] + [None]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    prompt = IDS[0].tolist()

    def expected(adapter):
        model = merge_lora(base, adapter) if adapter is not None else base
        return [s.token_id for s in generate(model, prompt, params)]

    want = [expected(a) for a in adapters]
    assert want[0] != want[1]
    barrier = threading.Barrier(3)

    def user(adapter):
        out = []
        for step in with_adapter(generate(base, prompt, params), adapter):
            barrier.wait(timeout=10)  # interleave the three users step by step
            out.append(step.token_id)
        return out

    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(user, adapters))
    assert got == want


def test_with_adapter_survives_thread_hops():
    """Each next() may run on a different thread (Gradio): the adapter is entered per call."""
    base = install_lora(base_model())
    adapter = random_adapter(base, seed=5)
    params = SamplingParams(temperature=0, max_new_tokens=8)
    want = [s.token_id for s in generate(merge_lora(base, adapter), IDS[0].tolist(), params)]
    gen = with_adapter(generate(base, IDS[0].tolist(), params), adapter)
    pools = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    got = [pools[i % 2].submit(next, gen).result().token_id for i in range(8)]
    assert got == want
    with torch.no_grad():  # nothing left active in this thread
        assert torch.equal(base(IDS), base_model()(IDS))


def test_config_validation():
    with pytest.raises(ValueError, match="subset of"):
        LoRAConfig(targets=("attn.c_attn", "lm_head"))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    assert LoRAConfig(targets="mlp.c_fc").targets == ("mlp.c_fc",)
    assert LoRAConfig().targets == TARGETS and LoRAConfig(rank=8, alpha=16).scale == 2.0


def test_inference_half_lives_in_gpt2():
    """Applying adapters needs only ``gpt2``; ``training`` re-exports the same objects."""
    import gpt2
    import gpt2.lora
    import training.lora

    for name in ("LoRAAdapter", "LoRAConfig", "LoRALinear", "install_lora", "merge_lora", "use_adapter",
                 "with_adapter"):
        assert getattr(training.lora, name) is getattr(gpt2.lora, name) is getattr(gpt2, name)
