"""Theorem 2.1, Figure 2 and the real-model measurement: numbers pinned, math checked against
closed forms, brute force and transformers' own RoPE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from posinterp.errors import PosinterpError
from posinterp.theory import bound as th_bound
from posinterp.theory import figure2 as th_figure2
from posinterp.theory import measure

D, C, L = 128, 10000.0, 2048


# ---------------------------------------------------------------- theory bound

@pytest.fixture(scope="module")
def paper_bound():
    return th_bound.bound(head_dim=D, base=C, length=L)


def test_bound_reproduces_the_paper_and_the_checked_notes(paper_bound):
    r = paper_bound
    co = r["interpolation"]["unit_grid_coefficient"]
    assert r["interpolation"]["stated_denominator_32_ln_c"] == pytest.approx(294.73, abs=0.005)
    assert co["stated"] == pytest.approx(D / 294.73, rel=1e-4)
    assert co["corrected"] == pytest.approx(0.4998, abs=5e-5)          # paper.md: ≈ 0.4998
    assert co["corrected"] == pytest.approx(1 / (8 * (1 - C ** (-4 / D))))
    ra = r["ratio_extrapolation_over_interpolation"]
    assert ra["stated_with_B_ge_d"] == pytest.approx(589, abs=1)        # "2 · 294.73 ≈ 589"
    assert ra["corrected_with_B_ge_d"] == pytest.approx(512.2, abs=0.1)  # paper.md: ≥ ≈ 512
    assert ra["corrected_with_min_B"] == pytest.approx(571.6, abs=0.5)   # paper.md: ≈ 571
    m = r["extrapolation"]["min_over_span"]
    assert m["range"] == [0, 2 * L]                                       # integer s in [0, 4096]
    assert m["min_B_over_d"] == pytest.approx(1.116, abs=0.01)
    assert m["at_s"] == 3643
    assert r["extrapolation"]["first_s_with_B_below_d"] is None          # B ≥ d holds on [0, 4096] ...


def test_b_stays_above_d_only_up_to_4860():
    r = th_bound.bound(head_dim=D, base=C, length=L, span=16384)
    ex = r["extrapolation"]
    assert ex["first_s_with_B_below_d"] == 4861                           # ... and first fails at s = 4861
    assert ex["min_over_span"]["min_B_over_d"] == pytest.approx(0.696, abs=0.005)


def test_b_curve_matches_the_literal_double_sum():
    theta = th_bound.thetas(16, 100.0)
    curve = th_bound.b_curve(theta, 300, chunk=37)  # chunk boundaries inside the range
    for s in (0, 1, 36, 37, 123, 300):
        literal = sum(abs(sum(np.exp(1j * s * theta[j]) for j in range(k))) for k in range(1, len(theta) + 1))
        assert curve[s] == pytest.approx(literal, rel=1e-12)
    assert curve[0] == sum(range(1, 9))


@pytest.mark.parametrize("d,c", [(128, 10000.0), (64, 100000.0), (16, 10000.0), (96, 500000.0)])
def test_corrected_coefficient_bounds_the_error_for_random_h(d, c):
    """max |a(s) − a_lin(s)| between integers, over random h and random intervals, stays under
    the corrected coefficient (and under the tight Σθ²/8)."""
    theta = th_bound.thetas(d, c)
    co = th_bound.interpolation_coefficients(d, c)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 201)
    worst = 0.0
    for _ in range(200):
        h = rng.normal(size=d // 2) + 1j * rng.normal(size=d // 2)
        s1 = float(rng.integers(0, 5000))
        a = th_bound.scores(h, theta, s1 + t)
        lin = (1 - t) * a[0] + t * a[-1]
        worst = max(worst, np.abs(a - lin).max() / np.abs(h).max())
    assert worst <= co["tight_sum"] <= co["corrected"]
    assert co["attained"] <= co["tight_sum"]


@pytest.mark.parametrize("d,c", [(128, 10000.0), (64, 100000.0)])
def test_the_stated_coefficient_is_exceeded_by_a_worst_case_h(d, c):
    """h_j = e^{−iθ_j/2} (max|h| = 1) beats the paper's d/(32 ln c) at s = ½, on any unit interval."""
    theta = th_bound.thetas(d, c)
    co = th_bound.interpolation_coefficients(d, c)
    for s1 in (0, 1000):
        h = th_bound.worst_case_h(theta) * np.exp(-1j * s1 * theta)  # the same error on [s1, s1 + 1]
        a = th_bound.scores(h, theta, np.array([s1, s1 + 0.5, s1 + 1]))
        err = abs(a[1] - (a[0] + a[2]) / 2)
        assert err == pytest.approx(np.sum(1 - np.cos(theta / 2)), rel=1e-9)
        assert err == pytest.approx(co["attained"], rel=1e-9)
        assert err > 1.1 * co["stated"]          # 0.4939 vs 0.4343 at d = 128: the paper's bound is false
        assert err <= co["corrected"]
    assert co["attained_at_t"] == 0.5


def test_bound_writes_json(tmp_path):
    out = tmp_path / "b" / "th_bound.json"
    th_bound.bound(head_dim=64, base=100000, length=8192, out=out)
    data = json.loads(out.read_text())
    assert data["config"]["head_dim"] == 64
    assert data["interpolation"]["corrected_holds"] is True
    assert "versions" in data


@pytest.mark.parametrize("kwargs,flag", [({"head_dim": 127}, "--head-dim"), ({"head_dim": 0}, "--head-dim"),
                                         ({"base": 1.0}, "--base"), ({"base": float("nan")}, "--base"),
                                         ({"length": 1}, "--length"), ({"span": 0}, "--span")])
def test_bound_refuses_bad_input(kwargs, flag):
    with pytest.raises(PosinterpError, match=flag):
        th_bound.BoundConfig(**kwargs)


def test_cli_prints_the_table(capsys):
    from posinterp.__main__ import main

    assert main(["theory", "bound", "--head-dim", "128", "--base", "10000", "--length", "2048"]) == 0
    out = capsys.readouterr().out
    assert "d / 294.73" in out and "589.46" in out and "512.22" in out and "571.59" in out and "1.1159" in out
    assert main(["theory", "bound", "--head-dim", "7"]) == 2


# ---------------------------------------------------------------- theory figure2

@pytest.fixture(scope="module")
def fig2(tmp_path_factory):
    out = tmp_path_factory.mktemp("fig2") / "fig2.png"
    return out, th_figure2.figure2(out=out)


def test_figure2_inside_small_beyond_huge(fig2):
    out, r = fig2
    assert out.stat().st_size > 10_000 and json.loads(out.with_suffix(".json").read_text())["rank"] == r["rank"]
    # measured (seed 0, numpy's default cut-off): 0.436 inside on the 0.1 grid, 3.3e10 beyond, rank 80 of 128
    assert r["max_abs_inside_fine"] < 1.0
    assert r["max_dev_from_linear_interp_inside"] < 0.02   # measured 0.0075: smooth between integers
    assert r["max_abs_beyond"] > 1e6                        # the paper: "> 8000"
    assert r["design_condition_number"] > 1e12
    assert 0.5 < r["residual_rms"] < r["target_rms"]        # 128 unknowns cannot follow 2049 random targets


def test_figure2_blow_up_is_set_by_the_cut_off(fig2):
    """Every cut-off fits the window equally well; how far beyond L goes is set by the cut-off alone."""
    _, r = fig2
    sweep = {row["rcond"]: row for row in r["rcond_sweep"]}
    for row in sweep.values():
        assert row["residual_rms"] == pytest.approx(r["residual_rms"], abs=0.005)
        assert row["max_abs_inside_fine"] < 1.0
    for rc in (None, 1e-12, 1e-10, 1e-8, 1e-6):
        assert sweep[rc]["max_abs_beyond"] > 1000           # measured ≥ 2145 (rcond 1e-6)
    assert sweep[1e-2]["max_abs_beyond"] < 2.0              # measured 0.60: a truncated fit stays bounded


def test_figure2_validation():
    for kwargs, flag in (({"extent": 1.0}, "--extent"), ({"step": 0}, "--step"), ({"rcond": 2.0}, "--rcond"),
                         ({"out": "x.svg"}, "--out"), ({"head_dim": 3}, "--head-dim")):
        with pytest.raises(PosinterpError, match=flag):
            th_figure2.Figure2Config(**kwargs)


# ---------------------------------------------------------------- theory measure

def test_logit_formula_matches_transformers_rope():
    """q·k after transformers' apply_rotary_pos_emb at positions (m, n) == Re Σ h e^{i(m−n)θ},
    for the default θ and for PI (rope_type linear, factor 2) from ROPE_INIT_FUNCTIONS."""
    import copy

    from conftest import make_tiny
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from posinterp.model.rope import RopeSpec, configure

    config = make_tiny("llama").config
    config_pi = copy.deepcopy(config)
    configure(config_pi, RopeSpec("pi", 2.0), 256)
    inv, ms = measure.rope_frequencies(config, LlamaRotaryEmbedding)
    inv_pi, ms_pi = measure.rope_frequencies(config_pi, LlamaRotaryEmbedding)
    np.testing.assert_allclose(inv_pi, inv / 2, rtol=1e-6)
    assert ms == ms_pi == 1.0
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    h, rest = measure.pair_coefficients(q[0, 0, 0].double(), k[0, 0, 0].double(), 16)
    coef = np.concatenate([h.real.numpy(), h.imag.numpy()])
    for cfg, freqs in ((config, inv), (config_pi, inv_pi)):
        rotary = LlamaRotaryEmbedding(cfg)
        for m, n in ((5, 5), (300, 7), (511, 0)):
            cos_m, sin_m = rotary(q, torch.tensor([[m]]))
            cos_n, sin_n = rotary(k, torch.tensor([[n]]))
            qr, _ = apply_rotary_pos_emb(q, q, cos_m, sin_m)
            kr, _ = apply_rotary_pos_emb(k, k, cos_n, sin_n)
            ours = coef @ measure.distance_table(np.array([m - n]), freqs)[:, 0] + float(rest)
            assert float((qr * kr).sum()) == pytest.approx(ours, abs=2e-4)


def test_collected_qk_reproduce_the_models_attention(tiny_dir):
    """Hooked pre-RoPE q/k + GQA mapping + scaling give the eager model's logits (up to the softmax shift)."""
    from posinterp.model import loader, refs

    ref = refs.resolve(tiny_dir("llama"))
    model, _ = loader.load_model(ref, dtype=torch.float32, attn_implementation="eager")
    ids = list(range(100, 164))
    positions = np.arange(64)
    captured = measure.collect_qk(model, ids, positions, head_dim=16)
    with torch.no_grad():
        attn = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    inv, _ = measure.rope_frequencies(model.config, type(model.model.rotary_emb))
    m, keys = 50, np.array([0, 3, 20, 50])
    for layer, (q, k) in enumerate(captured):
        for head in range(4):
            kv = head // 2
            h, rest = measure.pair_coefficients(q[m, head].double().expand(len(keys), -1),
                                                       k[keys, kv].double(), 16)
            table = measure.distance_table(m - keys, inv).astype(np.float64)  # (16, K)
            coef = np.concatenate([h.real.numpy(), h.imag.numpy()], axis=1)
            ours = (np.einsum("kr,rk->k", coef, table) + rest.numpy()) * model.model.layers[layer].self_attn.scaling
            theirs = torch.log(attn[layer][0, head, m, keys]).double().numpy()
            np.testing.assert_allclose(ours - ours[0], theirs - theirs[0], atol=1e-4)


@pytest.fixture(scope="module")
def tiny_measure(tmp_path_factory):
    from conftest import make_tiny

    from posinterp.model import refs

    root = tmp_path_factory.mktemp("measure")
    make_tiny("llama").save_pretrained(root / "tiny")
    refs.load_tokenizer(refs.resolve("smollm2-135m")).save_pretrained(root / "tiny")
    return root, measure.measure(str(root / "tiny"), pairs=64, data="pydoc", out=root / "out")


def test_measure_tiny_runs_and_pi_stays_closer(tiny_measure):
    root, r = tiny_measure
    assert (root / "out" / "measure.png").stat().st_size > 10_000
    data = json.loads((root / "out" / "measure.json").read_text())
    assert data["trained_window"] == 256 and data["length"] == 512 and len(data["heads"]) == 8
    ext, pi = r["summary"]["extrapolation"], r["summary"]["pi"]
    assert pi["share_heads_exceeding"] <= ext["share_heads_exceeding"]
    assert pi["out_of_range_share_mean"] <= ext["out_of_range_share_mean"]
    assert pi["excursion_over_span_max"] <= ext["excursion_over_span_max"]
    # PI's distances fall between in-window integers: its excursion obeys the corrected Theorem 2.1
    assert r["summary"]["pi_within_theorem"] and r["summary"]["pi_excursion_over_theorem_bound_max"] <= 1.0


def test_measure_refuses_bad_input(tiny_measure, tmp_path):
    root, _ = tiny_measure
    tiny = str(root / "tiny")
    with pytest.raises(PosinterpError, match="--length 200 must exceed"):
        measure.measure(tiny, length=200)
    with pytest.raises(PosinterpError, match="--tokens 300 exceeds"):
        measure.measure(tiny, tokens=300)
    with pytest.raises(PosinterpError, match="--out .* not empty"):
        measure.measure(tiny, out=root / "out")
    for kwargs, flag in (({"factor": 1.0}, "--factor"), ({"pairs": 0}, "--pairs"), ({"step": 0}, "--step")):
        with pytest.raises(PosinterpError, match=flag):
            measure.MeasureConfig(**kwargs)


@pytest.mark.slow
def test_measure_smollm2_short():
    """SmolLM2 (L = 8192) with q/k from 512 tokens: extrapolation leaves the range in most heads, PI in few."""
    r = measure.measure("smollm2-135m", tokens=512, pairs=32, data="pydoc")
    ext, pi = r["summary"]["extrapolation"], r["summary"]["pi"]
    # measured: 223/270 vs 46/270 heads; excursions 0.74 vs 0.014 of the in-window span
    assert ext["share_heads_exceeding"] > 0.6 and pi["share_heads_exceeding"] < 0.35
    assert pi["excursion_over_span_max"] < 0.05 < ext["excursion_over_span_max"]
    assert r["summary"]["pi_excursion_over_theorem_bound_max"] <= 1.0
