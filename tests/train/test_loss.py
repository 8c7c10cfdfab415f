"""The chunked loss equals the plain full-logits loss, in value and in gradients."""

from __future__ import annotations

import pytest
import torch

from posinterp.train.loss import IGNORE_INDEX, causal_lm_loss, full_logits_loss, linear_cross_entropy


def _inputs(seed=0, b=2, t=37, h=16, v=101):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, v, (b, t), generator=g)
    return hidden, weight, ids


@pytest.mark.parametrize("chunk", [1, 5, 36, 1000])
def test_chunked_equals_full_value_and_grads(chunk):
    hidden, weight, ids = _inputs()
    ref = full_logits_loss(hidden, weight, ids)
    gh_ref, gw_ref = torch.autograd.grad(ref, (hidden, weight))
    loss = causal_lm_loss(hidden, weight, ids, chunk=chunk)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, ref.to(loss.dtype), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-6, atol=1e-9)


def test_gradcheck_and_scaled_upstream_gradient():
    hidden, weight, ids = _inputs(b=1, t=6, h=4, v=7)
    assert torch.autograd.gradcheck(lambda hh, ww: causal_lm_loss(hh, ww, ids, chunk=2), (hidden, weight))
    # the stored gradients are scaled by the upstream gradient (gradient accumulation divides the loss)
    (3.0 * causal_lm_loss(hidden, weight, ids, chunk=2)).backward()
    g3 = hidden.grad.clone()
    hidden.grad = None
    causal_lm_loss(hidden, weight, ids, chunk=2).backward()
    torch.testing.assert_close(g3, 3.0 * hidden.grad)


def test_ignore_index_and_only_needed_grads():
    hidden, weight, ids = _inputs()
    labels = ids.clone()
    labels[0, :10] = IGNORE_INDEX
    ref = full_logits_loss(hidden, weight, ids, labels=labels)
    loss = causal_lm_loss(hidden, weight, ids, labels=labels, chunk=7)
    torch.testing.assert_close(loss, ref)
    frozen = weight.detach()
    (gh,) = torch.autograd.grad(causal_lm_loss(hidden, frozen, ids, chunk=7), (hidden,))
    (gh_ref,) = torch.autograd.grad(full_logits_loss(hidden, frozen, ids), (hidden,))
    torch.testing.assert_close(gh, gh_ref)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(hidden[:, :-1], weight, ids[:, 1:], chunk=3),
                                   full_logits_loss(hidden, weight, ids))


def test_tied_weight_on_tiny_model_matches_transformers_loss():
    """On a real (tiny, tied-embedding) model, value and every parameter gradient match HF's own loss."""
    from conftest import make_tiny

    model = make_tiny("llama", vocab=512)
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(1))
    ref = model(input_ids=ids, labels=ids).loss
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    hidden = model.model(input_ids=ids).last_hidden_state
    loss = causal_lm_loss(hidden, model.lm_head.weight, ids, chunk=16)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_close_to_fp32():
    hidden, weight, ids = _inputs(t=64, h=32, v=300)
    hidden32, weight32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()
    ref = full_logits_loss(hidden32, weight32, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = causal_lm_loss(hidden32, weight32, ids, chunk=16)
    assert loss.dtype == torch.float32
    loss.backward()
    assert weight32.grad.dtype == torch.float32 and hidden32.grad.dtype == torch.float32
    assert abs(loss.item() - ref.item()) / ref.item() < 2e-2
