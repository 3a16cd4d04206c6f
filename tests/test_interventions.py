"""Per-call interventions (``gpt2.Edit``), activation patching and direct logit attribution: against
hooked ``transformers`` (the reference), against each other, and isolation (a plain call after or
beside an edited one is unchanged)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import CONFIGS, random_model

import gpt2

pytestmark = pytest.mark.usefixtures("one_thread")

HEADS = {0: [1], 1: [0, 1]}  # the tiny model has 2 layers of 2 heads


def ids_of(n: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if batch is None else (batch, n)
    return torch.randint(0, CONFIGS["tiny"].vocab_size, shape, generator=g)


def hf_ablated(hf, ids: torch.Tensor, heads: dict, mode: str) -> torch.Tensor:
    """Logits of ``transformers`` with forward pre-hooks on ``attn.c_proj`` editing the head slices."""
    hs = hf.config.n_embd // hf.config.n_head

    def hook_for(hh):
        def pre(module, args):
            x = args[0].clone()
            for h in hh:
                sl = x[..., h * hs:(h + 1) * hs]
                x[..., h * hs:(h + 1) * hs] = 0 if mode == "zero" else sl.mean(dim=1, keepdim=True)
            return (x,)
        return pre

    hooks = [hf.transformer.h[layer].attn.c_proj.register_forward_pre_hook(hook_for(hh)) for layer, hh in heads.items()]
    try:
        with torch.no_grad():
            return hf(ids).logits
    finally:
        for h in hooks:
            h.remove()


# ---------------------------------------------------------------- ablation


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_matches_hooked_transformers(tiny_model, hf_tiny, mode):
    ids = ids_of(12, batch=2)
    with torch.no_grad():
        plain = tiny_model(ids)
        ours = tiny_model(ids, edit=gpt2.Edit(ablate_heads=HEADS, mode=mode))
    ref = hf_ablated(hf_tiny, ids, HEADS, mode)
    assert (ours - ref).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-3  # the ablation did something
    one = hf_ablated(hf_tiny, ids, {1: [0]}, mode)
    with torch.no_grad():
        assert (tiny_model(ids, edit=gpt2.Edit(ablate_heads={1: [0]}, mode=mode)) - one).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_cached_decode_with_ablation_equals_plain_pass(tiny_model, mode):
    """Decoding token by token with the edit gives the full pass's logits. Mean mode averages over the
    positions so far, so earlier positions saw fewer than a full pass's: equal only at the last position
    of each pass and with the last layer's heads (whose output no later position reads)."""
    heads = HEADS if mode == "zero" else {1: [0, 1]}
    ids, edit = ids_of(12, seed=1, batch=2), gpt2.Edit(ablate_heads=heads, mode=mode)
    cache = tiny_model.new_cache(2, 12)
    with torch.no_grad():
        tiny_model(ids[:, :8], cache, edit=edit)
        steps = [tiny_model(ids[:, i:i + 1], cache, edit=edit) for i in range(8, 12)]
        if mode == "zero":
            full = tiny_model(ids, edit=edit)
            assert (torch.cat(steps, 1) - full[:, 8:]).abs().max() < 1e-5
        else:  # the mean over every position so far: the last step sees all 12, like the full pass
            assert (steps[-1][:, -1] - tiny_model(ids, edit=edit)[:, -1]).abs().max() < 1e-5
            assert (steps[0][:, -1] - tiny_model(ids[:, :9], edit=edit)[:, -1]).abs().max() < 1e-5


def test_edit_composes_with_trace(tiny_model):
    ids = ids_of(10, seed=2)[None]
    plain, edited = gpt2.Trace(attn_layers=[0, 1], hidden=True, components=True), \
        gpt2.Trace(attn_layers=[0, 1], hidden=True, components=True)
    edit = gpt2.Edit(ablate_heads={1: [0]})
    with torch.no_grad():
        tiny_model(ids, trace=plain)
        out = tiny_model.residual(ids, trace=edited, edit=edit)
    for layer in (0, 1):  # an output ablation leaves the patterns (of its layer and before) unchanged
        assert torch.equal(plain.attn[layer], edited.attn[layer])
    assert torch.equal(plain.hidden_states[1], edited.hidden_states[1])
    assert (plain.hidden_states[2] - edited.hidden_states[2]).abs().max() > 1e-3  # ...the residual not
    assert torch.equal(edited.hidden_states[2], out)
    assert edited.head_outputs[1][:, 0].abs().max() == 0  # recorded after the edit
    assert torch.equal(edited.head_outputs[1][:, 1], plain.head_outputs[1][:, 1])


@pytest.mark.parametrize("edit, words", [
    (dict(ablate_heads={2: [0]}), "layer 2"),
    (dict(ablate_heads={-1: [0]}), "layer -1"),
    (dict(ablate_heads={0: [0, 5]}), "head 5"),
])
def test_bad_layer_or_head_refused(tiny_model, edit, words):
    with pytest.raises(ValueError, match=words):
        tiny_model(ids_of(4)[None], edit=gpt2.Edit(**edit))


def test_bad_mode_refused():
    with pytest.raises(ValueError, match="mode"):
        gpt2.Edit(ablate_heads={0: [0]}, mode="max")


# ---------------------------------------------------------------- patching


def hf_patched_ld(hf, clean, corrupt, target, foil, cells):
    """The reference: ``transformers`` with forward hooks recording the clean residuals (embeddings: the
    dropout after them; block l: its output) and writing one into the corrupted run at (layer, pos)."""
    sites = [hf.transformer.drop, *hf.transformer.h]
    saved = {}

    def ld(ids, hooks):
        try:
            with torch.no_grad():
                logits = hf(ids[None]).logits[0, -1]
        finally:
            for h in hooks:
                h.remove()
        return (logits[target] - logits[foil]).item()

    def keep(layer):
        return lambda mod, args, out: saved.__setitem__(layer, out[0].clone())

    ld_clean = ld(clean, [s.register_forward_hook(keep(i)) for i, s in enumerate(sites)])
    ld_corrupt = ld(corrupt, [])
    out = {}
    for layer, pos in cells:
        def put(mod, args, o, layer=layer, pos=pos):
            o = o.clone()
            o[0, pos] = saved[layer][pos]
            return o
        patched = ld(corrupt, [sites[layer].register_forward_hook(put)])
        out[layer, pos] = (patched - ld_corrupt) / (ld_clean - ld_corrupt)
    return out


def prompts(n=10, changed=(3, 6)):
    clean = ids_of(n, seed=3)
    corrupt = clean.clone()
    for p in changed:
        corrupt[p] = (corrupt[p] + 1000) % CONFIGS["tiny"].vocab_size
    return clean, corrupt


def target_foil(model, clean, corrupt):
    """The tokens the corruption moves most: down (the target) and up (the foil)."""
    with torch.no_grad():
        change = model(clean[None])[0, -1] - model(corrupt[None])[0, -1]
    return int(change.argmax()), int(change.argmin())


def test_patching_matches_hooked_transformers(tiny_model, hf_tiny):
    clean, corrupt = prompts()
    target, foil = target_foil(tiny_model, clean, corrupt)
    grid = gpt2.patch_residual(tiny_model, clean.tolist(), corrupt.tolist(), target, foil)
    assert grid.shape == (3, 10)
    cells = [(0, 3), (0, 6), (1, 3), (1, 6), (1, 9), (2, 9), (2, 4)]
    ref = hf_patched_ld(hf_tiny, clean, corrupt, target, foil, cells)
    for cell, want in ref.items():
        assert grid[cell] == pytest.approx(want, abs=1e-3), cell
    assert grid[2, 9] == pytest.approx(1.0, abs=1e-5)  # the final residual at the last position: all of it
    assert abs(grid[1]).max() > 0.05


@pytest.mark.parametrize("changed", [(2, 7), (0, 5)])
def test_batched_grid_equals_one_at_a_time(tiny_model, changed):
    clean, corrupt = prompts(changed=changed)
    target, foil = target_foil(tiny_model, clean, corrupt)
    grid = gpt2.patch_residual(tiny_model, clean.tolist(), corrupt.tolist(), target, foil)
    trace = gpt2.Trace(hidden=True)
    with torch.no_grad():
        c = tiny_model(clean[None], trace=trace)[0, -1]
        k = tiny_model(corrupt[None])[0, -1]
        ld_c, ld_k = (c[target] - c[foil]).item(), (k[target] - k[foil]).item()
        for layer in range(3):
            for pos in range(10):
                patch = gpt2.ResidualPatch(layer, torch.tensor([pos]), trace.hidden_states[layer][0, pos][None])
                out = tiny_model(corrupt[None], edit=gpt2.Edit(patch=patch))[0, -1]
                one = ((out[target] - out[foil]).item() - ld_k) / (ld_c - ld_k)
                assert grid[layer, pos] == pytest.approx(one, abs=1e-4), (layer, pos)
    assert np.all(grid[:, :changed[0]] == 0)  # before the first difference: exactly zero, not run
    assert np.all(grid[0, [p for p in range(10) if p not in changed]] == 0)  # same embeddings
    assert np.abs(grid[1, changed[0]:]).min() > 0


def test_patch_steps_stream_the_grid(tiny_model):
    clean, corrupt = prompts()
    target, foil = target_foil(tiny_model, clean, corrupt)
    steps = list(gpt2.patch_residual_steps(tiny_model, clean.tolist(), corrupt.tolist(), target, foil))
    assert [s.layer for s in steps] == [0, 1, 2]
    grid = gpt2.patch_residual(tiny_model, clean.tolist(), corrupt.tolist(), target, foil)
    assert np.array_equal(np.stack([s.row for s in steps]), grid)
    assert steps[0].ld_clean != steps[0].ld_corrupt


def test_patching_refuses_bad_input(tiny_model):
    clean, corrupt = prompts()
    with pytest.raises(ValueError, match=r"10 \(clean\) and 9 \(corrupted\)"):
        gpt2.patch_residual(tiny_model, clean.tolist(), corrupt.tolist()[:9], 1, 2)
    with pytest.raises(ValueError, match="same logit difference"):
        gpt2.patch_residual(tiny_model, clean.tolist(), clean.tolist(), 1, 2)
    with pytest.raises(ValueError, match="target_id"):
        gpt2.patch_residual(tiny_model, clean.tolist(), corrupt.tolist(), 10**6, 2)
    with pytest.raises(ValueError, match="empty"):
        gpt2.patch_residual(tiny_model, [], [], 1, 2)


# ---------------------------------------------------------------- direct logit attribution


@pytest.mark.parametrize("config", ["tiny", "deep-narrow"])
@pytest.mark.parametrize("foil", [True, False])
def test_dla_sums_to_the_logit_difference(config, foil):
    model = random_model(CONFIGS[config])
    ids = torch.randint(0, model.config.vocab_size, (9,), generator=torch.Generator().manual_seed(4))
    target, foil_id = 7, (11 if foil else None)
    r = gpt2.direct_logit_attribution(model, ids.tolist(), target, foil_id)
    with torch.no_grad():
        logits = model(ids[None])[0, -1]
    actual = (logits[target] - (logits[foil_id] if foil else 0)).item()
    assert r.heads.shape == (model.config.n_layer, model.config.n_head) and r.mlps.shape == (model.config.n_layer,)
    assert r.total == pytest.approx(actual, abs=1e-4)
    assert r.heads.sum() + r.mlps.sum() + r.embeddings + r.biases == pytest.approx(actual, abs=1e-4)
    assert np.abs(r.heads).min() > 0 and np.abs(r.mlps).min() > 0


def test_dla_of_a_knocked_out_head_is_zero(tiny_model):
    ids, edit = ids_of(9, seed=5).tolist(), gpt2.Edit(ablate_heads={0: [1]})
    r = gpt2.direct_logit_attribution(tiny_model, ids, 3, 4, edit=edit)
    assert r.heads[0, 1] == 0 and r.heads[0, 0] != 0
    with torch.no_grad():
        logits = tiny_model(torch.tensor([ids]), edit=edit)[0, -1]
    assert r.total == pytest.approx((logits[3] - logits[4]).item(), abs=1e-4)
    assert r.heads.sum() + r.mlps.sum() + r.embeddings + r.biases == pytest.approx(r.total, abs=1e-4)


# ---------------------------------------------------------------- isolation


def test_plain_call_after_edited_calls_is_unchanged(tiny_model):
    ids = ids_of(12, seed=6, batch=2)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        before = tiny_model(ids)
        tiny_model(ids, edit=gpt2.Edit(ablate_heads=HEADS, mode="mean"))
        cache = tiny_model.new_cache(2, 12)
        tiny_model(ids, cache, edit=gpt2.Edit(ablate_heads=HEADS, mode="mean"))
    clean, corrupt = prompts()
    gpt2.patch_residual(tiny_model, clean.tolist(), corrupt.tolist(), 1, 2)
    gpt2.direct_logit_attribution(tiny_model, clean.tolist(), 1, 2, edit=gpt2.Edit(ablate_heads=HEADS))
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), before)
    assert all(torch.equal(v, state[k]) for k, v in tiny_model.state_dict().items())
    assert all(p.grad is None for p in tiny_model.parameters())
    assert not tiny_model._forward_hooks and not tiny_model._forward_pre_hooks


def _call(model, kind: int, ids: torch.Tensor) -> torch.Tensor:
    """One of four kinds of calls on the shared model: plain, zero and mean ablation, a patch."""
    with torch.no_grad():
        if kind == 0:
            return model(ids)
        if kind == 3:
            patch = gpt2.ResidualPatch(1, torch.tensor([2, 5]), torch.ones(2, model.config.n_embd))
            return model(ids, edit=gpt2.Edit(patch=patch))
        heads, mode = (HEADS, "zero") if kind == 1 else ({0: [0]}, "mean")
        return model(ids, edit=gpt2.Edit(ablate_heads=heads, mode=mode))


def test_concurrent_edited_and_plain_calls_do_not_interfere(tiny_model):
    inputs = [ids_of(16, seed=10 + i, batch=2) for i in range(4)]
    want = {(k, i): _call(tiny_model, k, inputs[i]) for k in range(4) for i in range(4)}
    errors, barrier = [], threading.Barrier(4)

    def worker(t: int) -> None:
        barrier.wait()
        for n in range(20):
            k, i = (t + n) % 4, (n * 3 + t) % 4
            got = _call(tiny_model, k, inputs[i])
            if not torch.equal(got, want[k, i]):
                errors.append((t, n, k, i))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len({want[k, 0].sum().item() for k in range(4)}) == 4  # the four kinds really differ


def test_generate_with_an_edit_is_comparable_with_the_plain_run(tiny_model):
    prompt = ids_of(6, seed=7).tolist()
    params = gpt2.SamplingParams(max_new_tokens=12, seed=3, stop_at_eos=False)

    def run(edit=None):
        steps = list(gpt2.generate(tiny_model, prompt, params, keep_logits=True, edit=edit))
        return [s.token_id for s in steps], np.stack([s.details.logits for s in steps])

    plain, plain_logits = run()
    empty, empty_logits = run(gpt2.Edit())
    assert empty == plain and np.array_equal(empty_logits, plain_logits)
    edit = gpt2.Edit(ablate_heads=HEADS, mode="zero")
    edited, edited_logits = run(edit)
    assert len(edited) == len(plain)
    assert np.abs(edited_logits - plain_logits).max() > 1e-3
    with torch.no_grad():  # every step's logits: those of a full edited pass over what came before
        full = tiny_model(torch.tensor([prompt + edited[:-1]]), edit=edit)[0, len(prompt) - 1:]
    assert np.abs(edited_logits - full.numpy()).max() < 1e-4
    assert run(edit)[0] == edited
    assert run()[0] == plain  # and the plain run after them is unchanged
