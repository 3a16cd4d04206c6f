"""``gpt2.attribute`` against references: captum (InputXGradient, IntegratedGradients with the midpoint rule,
FeatureAblation with the ``<|endoftext|>`` embedding as each token row's replacement) and plain autograd, both
on ``transformers``' GPT-2 fed ``inputs_embeds``; completeness of integrated gradients; foils; and the shared
model left untouched (no parameter ``.grad``, plain outputs unchanged, concurrent calls independent).

The reference comparisons run in float64 (copies of the tiny models): the random model's attributions are
small (~1e-4) differences of log-probabilities near -10.8, which fp32 would blur to a few percent."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import gpt2
from gpt2 import attribution
from gpt2.attribution import METHODS, attribute, score

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET, FOIL = 464, 1169
IDS = [15496, 11, 616, 1438, 318, 1757, 290, 314, 588, 284, 50256, 3290, 257, 1492, 546, 262, 1110, 13]


@pytest.fixture(scope="module")
def model64(tiny_model) -> gpt2.GPT2:
    return copy.deepcopy(tiny_model).double()


@pytest.fixture(scope="module")
def hf64(hf_tiny):
    return copy.deepcopy(hf_tiny).double()


def hf_score(hf, target: int, foil: int | None = None):
    """The explained score as a function of the token embeddings ``(B, T, C)`` (HF adds the positions)."""
    def forward(embeddings: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(hf(inputs_embeds=embeddings).logits[:, -1], dim=-1)
        return logp[:, target] - (logp[:, foil] if foil is not None else 0)
    return forward


def hf_embeddings(hf, ids: list[int]) -> torch.Tensor:
    return hf.transformer.wte(torch.tensor([ids])).detach()


def close(actual: np.ndarray, expected, rel: float = 1e-6) -> None:
    """Agreement relative to the largest attribution (single scores may be near 0)."""
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().numpy()
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * np.abs(expected).max())


# ---------------------------------------------------------------- references


@pytest.mark.parametrize("foil", [None, FOIL])
def test_gradient_x_input_matches_transformers_autograd(model64, hf64, foil):
    emb = hf_embeddings(hf64, IDS).requires_grad_(True)
    (grad,) = torch.autograd.grad(hf_score(hf64, TARGET, foil)(emb).sum(), emb)
    expected = (grad * emb).sum(-1)[0]
    close(attribute(model64, IDS, TARGET, "gradient_x_input", foil_id=foil), expected)


def test_fp32_matches_the_float64_reference(tiny_model, model64):
    """The served precision agrees with the float64 run to fp32's accuracy on these small differences."""
    for method in METHODS:
        close(attribute(tiny_model, IDS, TARGET, method, steps=8), attribute(model64, IDS, TARGET, method, steps=8),
              rel=5e-2)


@pytest.mark.parametrize("foil", [None, FOIL])
def test_input_x_gradient_matches_captum(model64, hf64, foil):
    captum = pytest.importorskip("captum.attr")
    emb = hf_embeddings(hf64, IDS)
    emb.requires_grad_(True)  # as captum would (it warns otherwise)
    expected = captum.InputXGradient(hf_score(hf64, TARGET, foil)).attribute(emb).sum(-1)[0]
    close(attribute(model64, IDS, TARGET, "gradient_x_input", foil_id=foil), expected)


@pytest.mark.parametrize(("steps", "foil"), [(2, None), (7, FOIL), (20, None)])
def test_integrated_gradients_match_captum(model64, hf64, steps, foil):
    """captum's ``riemann_middle`` is the midpoint rule, alpha = (k + 0.5) / steps (captum refuses fewer than
    2 steps); 20 steps span two passes."""
    captum = pytest.importorskip("captum.attr")
    emb = hf_embeddings(hf64, IDS)
    ig = captum.IntegratedGradients(hf_score(hf64, TARGET, foil))
    expected = ig.attribute(emb, baselines=torch.zeros_like(emb), n_steps=steps, method="riemann_middle")
    close(attribute(model64, IDS, TARGET, "integrated_gradients", foil_id=foil, steps=steps), expected.sum(-1)[0])


@pytest.mark.parametrize("foil", [None, FOIL])
def test_occlusion_matches_captum_feature_ablation(model64, hf64, foil):
    """FeatureAblation with one feature group per token row and the ``<|endoftext|>`` embedding as the
    replacement: each group's elements all get score(ids) - score(ablated), so one column is the answer."""
    captum = pytest.importorskip("captum.attr")
    emb = hf_embeddings(hf64, IDS)
    eot = hf_embeddings(hf64, [gpt2.EOT_ID]).expand_as(emb)
    mask = torch.arange(len(IDS))[None, :, None].expand_as(emb)
    expected = captum.FeatureAblation(hf_score(hf64, TARGET, foil)).attribute(
        emb, baselines=eot, feature_mask=mask, perturbations_per_eval=len(IDS))[0, :, 0]
    actual = attribute(model64, IDS, TARGET, "occlusion", foil_id=foil)
    close(actual, expected)
    assert abs(actual[IDS.index(gpt2.EOT_ID)]) < 1e-12  # occluding <|endoftext|> by itself changes nothing


# ---------------------------------------------------------------- properties


def test_integrated_gradients_completeness(model64):
    """The sum is score(ids) - score(zero token embeddings), up to the midpoint rule's O(1/steps^2) error."""
    idx = torch.tensor([IDS])
    with torch.no_grad():
        baseline = torch.zeros_like(model64.transformer.wte(idx))
        delta = (score(model64, idx, TARGET, FOIL) - score(model64, idx, TARGET, FOIL, embeddings=baseline)).item()
    errors = {steps: abs(attribute(model64, IDS, TARGET, "integrated_gradients", FOIL, steps).sum() - delta)
              for steps in (8, 64)}
    assert errors[64] <= 1e-4 * abs(delta)
    assert errors[64] < errors[8] / 10


@pytest.mark.parametrize("method", METHODS)
def test_foil_is_the_difference_of_targets(model64, method):
    """Every method is linear in the explained score: (target, foil) = target alone - foil alone."""
    both = attribute(model64, IDS, TARGET, method, foil_id=FOIL, steps=6)
    apart = attribute(model64, IDS, TARGET, method, steps=6) - attribute(model64, IDS, FOIL, method, steps=6)
    close(both, apart, rel=1e-9)
    assert np.abs(both).max() > 0


@pytest.mark.parametrize("method", METHODS)
def test_batching_does_not_change_the_answer(model64, monkeypatch, method):
    """Passes of one or two rows give the single-pass answer (chunk boundaries are handled)."""
    ids = (IDS * 3)[:40]
    whole = attribute(model64, ids, TARGET, method, steps=5)
    monkeypatch.setattr(attribution, "TOKENS_PER_PASS", 2 * len(ids) - 1)  # one row per pass
    close(attribute(model64, ids, TARGET, method, steps=5), whole, rel=1e-12)
    monkeypatch.setattr(attribution, "ROWS_PER_PASS", 2)
    monkeypatch.setattr(attribution, "TOKENS_PER_PASS", 2 * len(ids))  # two rows per pass, one left over
    close(attribute(model64, ids, TARGET, method, steps=5), whole, rel=1e-12)


def test_bfloat16_model(tiny_model):
    """A bf16 model (as served on some GPUs) works; its scores are taken in fp32 and follow the fp32 model's."""
    bf16 = copy.deepcopy(tiny_model).to(torch.bfloat16)
    for method in ("gradient_x_input", "integrated_gradients"):
        got, want = attribute(bf16, IDS, TARGET, method, FOIL, 4), attribute(tiny_model, IDS, TARGET, method, FOIL, 4)
        assert np.corrcoef(got, want)[0, 1] > 0.99


def test_ids_as_tensor_and_numpy_ints(model64):
    expected = attribute(model64, IDS, TARGET)
    np.testing.assert_array_equal(attribute(model64, torch.tensor(IDS), np.int64(TARGET)), expected)
    assert expected.dtype == np.float64 and expected.shape == (len(IDS),)
    for method in METHODS:  # a one-token text
        assert attribute(model64, [IDS[1]], TARGET, method, steps=2).shape == (1,)
    idx = torch.tensor([[IDS[1]], [gpt2.EOT_ID]])
    with torch.no_grad():
        full, occluded = score(model64, idx, TARGET).tolist()
    np.testing.assert_allclose(attribute(model64, [IDS[1]], TARGET, "occlusion"), [full - occluded], rtol=1e-9)


# ---------------------------------------------------------------- the shared model


@pytest.mark.parametrize("requires_grad", [True, False])
def test_no_parameter_grad_and_plain_outputs_unchanged(tiny_model, requires_grad):
    model = copy.deepcopy(tiny_model).requires_grad_(requires_grad)
    idx = torch.tensor([IDS])
    with torch.no_grad():
        before = model(idx)
    for method in METHODS:
        assert np.abs(attribute(model, IDS, TARGET, method, FOIL, steps=4)).max() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad == requires_grad for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(idx), before, rtol=0, atol=0)


def test_works_under_callers_no_grad_and_inference_mode(tiny_model):
    expected = attribute(tiny_model, IDS, TARGET, "integrated_gradients", steps=3)
    with torch.no_grad():
        np.testing.assert_array_equal(attribute(tiny_model, IDS, TARGET, "integrated_gradients", steps=3), expected)
    with torch.inference_mode():
        np.testing.assert_array_equal(attribute(tiny_model, IDS, TARGET, "integrated_gradients", steps=3), expected)


def test_concurrent_attribution_and_plain_calls_do_not_interfere(tiny_model):
    """Threads mixing every method with plain forward passes on one model give their sequential results."""
    texts = [IDS, IDS[3:], IDS[::-1], IDS[5:15]]

    def plain(ids):
        with torch.no_grad():
            return tiny_model(torch.tensor([ids]))[0, -1].numpy()

    jobs = [(attribute, (tiny_model, ids, TARGET, method, FOIL if i % 2 else None, 4))
            for i, ids in enumerate(texts) for method in METHODS]
    jobs += [(plain, (ids,)) for ids in texts]
    jobs = jobs * 3
    sequential = [fn(*args) for fn, args in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        concurrent = list(pool.map(lambda job: job[0](*job[1]), jobs))
    for got, want in zip(concurrent, sequential, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "saliency"}, "method must be one of 'gradient_x_input', 'integrated_gradients', 'occlusion'"),
    ({"method": "integrated_gradients", "steps": 0}, "steps must be a whole number of at least 1"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"steps": True}, "steps must be a whole number"),
    ({"ids": []}, "ids must hold at least one token"),
    ({"ids": [1, 50257]}, "ids must be token ids from 0 to 50256"),
    ({"ids": [-1]}, "ids must be token ids from 0 to 50256"),
    ({"ids": [1] * 65}, "ids must be at most 64 tokens"),
    ({"ids": torch.tensor([[1, 2]])}, "ids must be one text's token ids"),
    ({"target_id": 50257}, "target_id must be a token id from 0 to 50256"),
    ({"target_id": "Paris"}, "target_id must be a token id"),
    ({"foil_id": -1}, "foil_id must be a token id from 0 to 50256"),
    ({"foil_id": TARGET}, "foil_id must differ from target_id"),
])
def test_bad_arguments_are_refused_by_name(tiny_model, kwargs, message):
    args = {"ids": IDS, "target_id": TARGET, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        attribute(tiny_model, **args)
