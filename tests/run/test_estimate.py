"""Estimates: one home for the constants, stage times priced from a measured speed curve."""

from __future__ import annotations

import math

import pytest

from posinterp import speed
from posinterp.run import estimate
from posinterp.speed import Speed


def _speed() -> Speed:
    # t(T) = 1e-4·T + 1e-8·T² exactly: 512 → 0.05382, 2048 → 0.24674
    f = lambda t: 1e-4 * t + 1e-8 * t * t  # noqa: E731
    g = lambda t: 3 * f(t)  # noqa: E731  (training: forward and backward)
    return Speed("fp32", {512: f(512), 2048: f(2048)}, {1024: g(1024), 2048: g(2048)}, 0.5, 1e-5)


def test_forward_curve_is_fitted_through_the_two_lengths():
    s = _speed()
    a, b = s.fit
    assert a == pytest.approx(1e-4) and b == pytest.approx(1e-8)
    assert s.forward_s(16384) == pytest.approx(1e-4 * 16384 + 1e-8 * 16384**2)
    assert s.train_fit == pytest.approx((3e-4, 3e-8))
    # two micro-steps' forward and backward, one optimizer step
    assert s.train_step_s(4096, 2) == pytest.approx(2 * 3 * s.forward_s(4096) + 0.5)


def test_measured_attention_prices_each_length_from_its_own_timing():
    """t(T) = a·T + layers·attention(T), attention read at the measured lengths and interpolated as a power law
    between them (T² beyond the longest); a is what the measured forwards leave after attention."""
    attn = {1024: 0.01, 2048: 0.04, 4096: 0.2}  # 4× then 5× per doubling: not one quadratic
    layers, a = 10, 5e-4
    fwd = {t: a * t + layers * attn[t] for t in (1024, 4096)}
    s = Speed("bf16", fwd, {1024: 1.0, 2048: 3.0}, 0.1, 1e-5, attn, layers)
    assert s.per_token_s == pytest.approx(a)
    assert s.forward_s(2048) == pytest.approx(a * 2048 + layers * 0.04)  # measured, not fitted
    assert s.attention_s(8192) == pytest.approx(0.2 * 4)  # beyond the longest: T²
    assert s.attention_s(2896) == pytest.approx(0.04 * (2896 / 2048) ** math.log2(5))  # 5× per doubling there
    assert s.decode_token_s(2048) == pytest.approx(a + layers * 2 * 0.04 / 2048)
    # the pre-attention fit stays for a Speed without attention timings (e.g. read from an older cache)
    assert _speed().forward_s(2048) == pytest.approx(_speed().fit[0] * 2048 + _speed().fit[1] * 2048**2)


def test_stage_prices_add_up_their_forwards():
    s = _speed()
    train = estimate.train_seconds(s, steps=10, seq_len=2048, grad_accum=2)
    assert train == pytest.approx(estimate.LOAD_S + 10 * (2 * 3 * s.forward_s(2048) + 0.5))
    # one 4096-token document, window 2048 stride 1024: windows [0,2048) [1024,3072) [2048,4096)
    ppl = estimate.ppl_seconds(s, doc_tokens=[4096], windows={2048: 1024})
    # scored: the first window from its second token, the last 1024 tokens of the others
    assert ppl == pytest.approx(estimate.LOAD_S + 3 * s.forward_s(2048) + (2047 + 1024 + 1024) * 1e-5)
    pk = estimate.passkey_seconds(s, lengths=[1000], trials=2, new_tokens=0)
    assert pk == pytest.approx(estimate.LOAD_S + 2 * s.forward_s(1000))


def test_train_and_estimate_share_the_activation_rule_and_loss_chunk():
    from posinterp.train import config, loss, model_setup

    assert model_setup.ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN is speed.ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
    assert config.TrainConfig.__dataclass_fields__["loss_chunk"].default == loss.DEFAULT_CHUNK
    import inspect

    assert inspect.signature(estimate.estimate).parameters["loss_chunk"].default == loss.DEFAULT_CHUNK


def test_measured_speed_on_a_tiny_model(tiny_dir):
    s = estimate.measure_speed(str(tiny_dir()), precision="fp32", lengths=(32, 128), train_lengths=(32, 64),
                               attention_lengths=speed.ATTENTION_LENGTHS)
    assert s.precision == "fp32" and set(s.forward) == {32, 128} and set(s.train) == {32, 64}
    assert s.optimizer_s > 0 and s.train_step_s(64) > s.optimizer_s and s.head_s_per_token > 0
    assert s.forward_s(256) > s.forward_s(128) > 0
    assert set(s.attention) == set(speed.ATTENTION_LENGTHS) and s.layers == 2
