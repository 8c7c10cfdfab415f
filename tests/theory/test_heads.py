"""`theory heads`: the reductions against brute force on synthetic attention, the hooks against the model's
own attention weights, a hand-built previous-token head that PI ×2 moves to offset 2, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny

from posinterp import errors
from posinterp.__main__ import main
from posinterp.theory import head_measure, heads


def causal_random(h: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(h, t, t, generator=g) * 2
    logits = logits.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
    return logits.softmax(-1)


# ---------------------------------------------------------------- synthetic attention matrices

def test_profile_of_a_one_back_head_is_all_at_offset_1():
    t, k = 40, 5
    attn = torch.zeros(2, t, t)
    attn[0, 0, 0] = 1.0
    attn[0, torch.arange(1, t), torch.arange(0, t - 1)] = 1.0  # head 0: one token back
    attn[1, :, 0] = 1.0  # head 1: the first token (a sink)
    prof = head_measure.offset_profile(attn, k).numpy()
    assert prof.shape == (2, k + 3)
    np.testing.assert_allclose(prof[0], [0, 1] + [0] * (k - 1) + [0, 0], atol=1e-7)
    np.testing.assert_allclose(prof[1], [0] * (k + 1) + [1, 0], atol=1e-7)
    assert head_measure.peak_offsets(prof, k).tolist() == [1, 0]


def test_profile_matches_brute_force_on_random_attention():
    t, k = 33, 4
    attn = causal_random(3, t)
    prof = head_measure.offset_profile(attn, k).numpy()
    a = attn.numpy()
    queries = range(k + 1, t)
    for h in range(3):
        want = [np.mean([a[h, i, i - d] for i in queries]) for d in range(k + 1)]
        sink = np.mean([a[h, i, 0] for i in queries])
        np.testing.assert_allclose(prof[h, : k + 1], want, rtol=1e-5)
        assert prof[h, k + 1] == pytest.approx(sink, rel=1e-5)
        assert prof[h].sum() == pytest.approx(1.0, abs=1e-5)  # buckets partition each row


def test_induction_scores_on_a_synthetic_induction_head():
    start, n = 1, 12
    t = start + 2 * n
    attn = torch.zeros(3, t, t)
    attn[:, :, 0] = 1.0
    for j in range(n):
        q = start + n + j
        attn[:, q] = 0.0
        attn[0, q, start + j + 1] = 1.0  # induction: token after the earlier occurrence
        attn[1, q, start + j + 2 if j + 2 < n else start + j] = 1.0  # skip (duplicate where j + 2 runs out)
        attn[2, q, start + j] = 1.0  # duplicate token
    s = head_measure.induction_scores(attn, start, n)
    assert s["induction"].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert s["skip"].tolist() == pytest.approx([0.0, (n - 2) / n, 0.0])
    assert s["duplicate"].tolist() == pytest.approx([0.0, 2 / n, 1.0])


def test_copy_scores_sum_over_occurrences_and_average_over_queries():
    attn = causal_random(2, 20, seed=1)
    queries, targets = [15, 17], {"copy": [[3, 9], [4, 10]]}
    got = head_measure.copy_scores(attn, queries, targets)["copy"].numpy()
    a = attn.numpy()
    want = [((a[h, 15, 3] + a[h, 15, 9]) + (a[h, 17, 4] + a[h, 17, 10])) / 2 for h in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_passkey_probes_point_at_the_keys_digits(smol_tokenizer):
    (p,) = head_measure.passkey_probes(smol_tokenizer, 300, 1, seed=0)
    assert len(p.ids) == 300
    assert [smol_tokenizer.decode([p.ids[q + 1]]) for q in p.queries] == list(p.key)  # each query predicts a digit
    for k, q in enumerate(p.queries):
        assert [p.ids[c] for c in p.targets["copy"][k]] == [p.ids[q + 1]] * 2  # both earlier occurrences
        assert [p.ids[d] for d in p.targets["duplicate"][k]] == [p.ids[q]] * 2


# ---------------------------------------------------------------- hooks and a hand-built head on a tiny model

def test_hooks_reproduce_the_models_own_attention_weights():
    model = make_tiny("llama")
    model.set_attn_implementation("eager")
    ids = list(range(100, 164))
    layers, _ = head_measure.run_reduced(model, ids, lambda w: {"profile": head_measure.offset_profile(w, 4)})
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    for got, want in zip(layers, ref, strict=True):
        np.testing.assert_allclose(got["profile"], head_measure.offset_profile(want[0], 4).numpy(), rtol=1e-5, atol=1e-7)


def test_hooks_refuse_a_model_that_returns_no_weights():
    model = make_tiny("llama")
    model.set_attn_implementation("sdpa")
    with pytest.raises(errors.PosinterpError, match="eager"):
        head_measure.run_reduced(model, list(range(100, 120)), lambda w: {"profile": head_measure.offset_profile(w, 2)})


def one_back_model(folder, tokenizer, amplitude: float = 14.0):
    """Layer 0, head 0 attends one token back by RoPE alone: q = a·e^{−iθ_j}, k = a (biases, no weights),
    so its logit is a² Re Σ_j e^{i(Δ−1)θ_j}, largest at Δ = 1. Under PI ×2 it is Σ cos((Δ/2 − 1)θ_j): Δ = 2."""
    model = make_tiny("llama", attention_bias=True)
    attn = model.model.layers[0].self_attn
    d = attn.head_dim
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    with torch.no_grad():
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        attn.q_proj.bias[:d] = torch.cat([amplitude * torch.cos(-inv), amplitude * torch.sin(-inv)]).float()
        attn.k_proj.bias[: d // 2] = amplitude
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_back(tmp_path_factory, smol_tokenizer):
    return one_back_model(tmp_path_factory.mktemp("heads") / "one-back", smol_tokenizer)


def test_a_one_back_head_peaks_at_1_and_at_2_under_pi(one_back, tmp_path):
    kw = dict(length=128, trials=1, max_offset=4, top=2, device="cpu", dtype="float32")
    plain = heads.heads(str(one_back), out=tmp_path / "none", **kw)
    text = np.asarray(plain["per_head"]["text_profile"])
    assert text[0, 0, 1] > 0.9 and head_measure.peak_offsets(text, 4)[0, 0] == 1
    assert [0, 0] in plain["head_sets"]["previous_token"]
    pi = heads.heads(str(one_back), rope="pi:2", reference=tmp_path / "none", **kw)
    text_pi = np.asarray(pi["per_head"]["text_profile"])
    assert head_measure.peak_offsets(text_pi, 4)[0, 0] == 2 and text_pi[0, 0, 2] > 0.9
    prev = pi["summary"]["text"]["previous_token_heads"]
    assert prev["peak_offsets"].get("2", 0) >= 1 and prev["mass_at_2"] > prev["mass_at_1"]
    # files: JSON readable with per-head arrays of layers × heads, PNG non-empty
    data = json.loads((tmp_path / "none" / heads.HEADS_JSON).read_text())
    assert np.asarray(data["per_head"]["repeat_induction"]).shape == (2, 4)
    assert (tmp_path / "none" / heads.HEADS_PNG).stat().st_size > 10_000


# ---------------------------------------------------------------- refusals, one line, before any work

@pytest.mark.parametrize("argv, flag", [
    (["--length", "1"], "--length 1"),
    (["--length", "10"], "--length 10"),
    (["--rope", "pi"], "--rope 'pi'"),
    (["--rope", "xpos:2"], "--rope 'xpos:2'"),
    (["--max-offset", "1"], "--max-offset 1"),
    (["--reference", "/nonexistent/heads.json"], "--reference"),
])
def test_cli_refuses_bad_input_in_one_line(one_back, capsys, argv, flag):
    assert main(["theory", "heads", str(one_back), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flag in err


def test_cli_refuses_a_passkey_prompt_that_cannot_fit(one_back, capsys):
    assert main(["theory", "heads", str(one_back), "--length", "24", "--max-offset", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--length 24" in err and "passkey" in err
