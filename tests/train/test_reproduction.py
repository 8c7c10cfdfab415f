"""Miniature reproduction of the paper's claims, through the real `train`, `extend` and evals.

    .venv/bin/pytest tests/train/test_reproduction.py -s                            # seed 0 (CI); -s prints the numbers
    POSINTERP_REPRO_SEED=3 .venv/bin/pytest tests/train/test_reproduction.py -s     # another seed

A tiny LLaMA (hidden 64, 2 layers, 4 heads of 16, RoPE θ = 10000) is pretrained from scratch by
`posinterp.train.train` at a window of L = 128 tokens on passkey documents (`posinterp.evals.synthetic`:
the eval's own template, key at a random depth, question, answer). At 4L = 512 it is then
measured four ways with the real `passkey` and `perplexity` evals:

| run              | how                                                                          |
| ---------------- | ---------------------------------------------------------------------------- |
| extrapolation    | the pretrained model as is (`allow_beyond_window=True`)                      |
| PI, 0 steps      | `extend(factor=4)`                                                           |
| PI, fine-tuned   | `extend(factor=4)`, then `train` at 4L for FINETUNE steps                   |
| direct fine-tune | window raised to 4L with RoPE unchanged (the paper's "no PI" baseline), then the same `train` |

Both fine-tunes read the same documents (passkey documents up to 4L long), in the same order,
with the same settings. The claims that hold in this miniature are asserted; the two that do
not (see `test_pi_finetune_recovers_retrieval`, `test_direct_finetune_does_worse`) are strict
xfails that carry the measured numbers, so the day they start to hold the suite says so.

Measured (`for s in 0 1 2 3 4; do POSINTERP_REPRO_SEED=$s .venv/bin/pytest -q tests/train/test_reproduction.py -s; done`,
torch 2.13 CPU, 2 cores, 1000 pretraining steps): 51-66 s wall per seed when alone, all five seeds pass.
Accuracy is passkey accuracy at 2L-4L (extended models: / inside L), ppl the held-out perplexity at
the run's window, × its ratio to the pretrained model's at L:

| seed | window acc | ppl at L | extrapolation acc | ppl | PI 0 steps acc | ppl | PI fine-tuned ppl | acc | direct ft acc | ppl |
| ---- | ---------- | -------- | ----------------- | --- | -------------- | --- | ----------------- | --- | ------------- | --- |
| 0 | 0.93 | 1.74 | 0.00 (4L 0.00) | 18.75 (10.80×) | 0.00 / 0.00 | 16.02 (9.23×) | 1.125 (pi0 ÷ 14.2, 0.65×) | 0.00 / 0.00 | 0.12 / 0.50 | 1.076 |
| 1 | 0.45 | 2.01 | 0.02 (4L 0.00) | 5.41 (2.69×) | 0.00 / 0.00 | 9.62 (4.78×) | 1.140 (pi0 ÷ 8.4, 0.57×) | 0.00 / 0.00 | 0.02 / 0.00 | 1.076 |
| 2 | 0.93 | 2.85 | 0.15 (4L 0.00) | 10.69 (3.75×) | 0.00 / 0.00 | 9.24 (3.24×) | 1.127 (pi0 ÷ 8.2, 0.40×) | 0.00 / 0.00 | 0.17 / 0.62 | 1.075 |
| 3 | 1.00 | 2.46 | 0.35 (4L 0.00) | 5.04 (2.04×) | 0.00 / 0.00 | 7.62 (3.09×) | 1.120 (pi0 ÷ 6.8, 0.45×) | 0.00 / 0.00 | 0.45 / 0.97 | 1.076 |
| 4 | 0.98 | 2.06 | 0.03 (4L 0.00) | 4.44 (2.15×) | 0.00 / 0.00 | 5.78 (2.80×) | 1.120 (pi0 ÷ 5.2, 0.54×) | 0.00 / 0.00 | 0.53 / 0.92 | 1.063 |

Thresholds and the worst seed's margin: premise ≥ 0.4 (0.45, seed 1); extrapolation at 4L itself ≤ 0.1
(0.00 everywhere) and at 2L-4L at least 0.4 below the premise (0.02 vs 0.05 allowed, seed 1); its ppl
≥ 1.25× (2.04×); PI 0 steps retrieves ≤ 0.1 at 2L-4L (0.00) and at least 0.4 below the premise inside
L (0.00 vs 0.05, seed 1), ppl ≥ 1.5× (2.80×); PI fine-tuned ppl ≤ pi0 / 4 (÷ 5.2) and ≤ 1.1× the
model's at L (0.65×). These thresholds were set after looking at seeds 0-4 (600 steps, then 1000 steps:
at 600 steps seeds 1 and 2 had not learned retrieval, 0.10 and 0.20; at 1000, seed 3 extrapolates to
2L, 0.75 there, so the 2L-4L bound is relative to the premise, and 4L itself is checked absolutely),
so the five-seed pass is a calibration; seed 1's margins are thin.

Why PI's retrieval does not come back here: a key is copied digit by digit, which needs a head that
attends exactly one token back. With head dim 16 only the two fastest RoPE pairs (1 and 0.32 rad per
token) resolve that; PI ×4 turns them 0.25 and 0.08 rad per token, so that head now peaks about four
tokens back and PI retrieves 0% even inside L (column "/ inside L"). 40 steps, 100 steps at lr 2e-3 or
5e-3, 150 steps on short documents, head dim 32 or 64 (no circuit formed in 600 steps) and a cosine
pretraining schedule all left PI fine-tuned at ≤ 5% (seed 0, 600 pretraining steps). At 1000
pretraining steps, heads of 32 or 64 (hidden 64/96/128) learned retrieval inside L only to 0.00-0.20, so
they cannot test the claim within the 2-minute budget, and RoPE base 100 or 10 (more fast pairs in
16-dim heads) still left PI fine-tuned at 0% (docs/theory.md). The real model fails the same way at
small budgets: SmolLM2 with PI x2 fine-tuned for 100 steps (3.3 M tokens on a GPU) retrieves 0% and copies
only a key's first digit (docs/demo-gpu/report.md); given the paper's 1000 steps on the CPU it recovers,
100% from step 500 (docs/results/curves1000/), a budget this miniature's 2 minutes cannot afford. Direct
fine-tuning keeps the one-token attention intact and only has to learn the longer distances, so in
this miniature it wins on retrieval (0.02-0.53 at 2L-4L) and on perplexity (1.063-1.076 vs PI's
1.120-1.140).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

SEED = int(os.environ.get("POSINTERP_REPRO_SEED", "0"))
L = 128
FACTOR = 4
LONG_WINDOW = FACTOR * L
MODEL = dict(hidden=64, layers=2, heads=4, rope_theta=10000.0)
PRETRAIN = dict(steps=1000, batch_size=16, lr=2e-3, warmup=20)
FINETUNE = dict(steps=40, batch_size=4, lr=2e-3, warmup=20)
COMMON = dict(precision="fp32", tensorboard=False, save_every=0, seed=SEED)
ANSWER = 8
"""The eval decodes up to 8 tokens (" 12345." is 7): prompts this much shorter than a window keep the answer inside it."""
IN_WINDOW = ",".join(str(k) for k in (L - 40, L - 24, L - ANSWER))
LONG = ",".join(str(k) for k in (2 * L, (2 * L + LONG_WINDOW - ANSWER) // 2, LONG_WINDOW - ANSWER))
"""Prompt lengths at the extended window: 2L, 3L and 4L (less the answer)."""
TRIALS = 20


def _raise_window(src: Path, dst: Path, window: int) -> Path:
    """The direct fine-tuning baseline's start: the same weights and RoPE, window set to `window`."""
    from transformers import AutoConfig

    shutil.copytree(src, dst)
    config = AutoConfig.from_pretrained(dst)
    config.max_position_embeddings = window
    config.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> dict:
    """Pretrain once, extend, fine-tune both ways, evaluate everything; the tests below read the numbers."""
    from posinterp.evals.passkey import passkey
    from posinterp.evals.perplexity import perplexity
    from posinterp.evals.synthetic import (
        passkey_sequences,
        passkey_tokenizer,
        tiny_passkey_model,
        write_jsonl,
    )
    from posinterp.model.extend import extend
    from posinterp.train.loop import train

    root = tmp_path_factory.mktemp("repro")
    tok = passkey_tokenizer()
    init = tiny_passkey_model(root / "init", window=L, seed=SEED, tokenizer=tok, **MODEL)
    data = {
        "pretrain": passkey_sequences(tok, sequences=PRETRAIN["steps"] * PRETRAIN["batch_size"], seq_len=L, seed=SEED),
        "finetune": passkey_sequences(tok, sequences=FINETUNE["steps"] * FINETUNE["batch_size"], seq_len=LONG_WINDOW,
                                      seed=SEED + 1000),
        # held out: one passkey document of exactly 4L − 1 tokens (L − 1 for the short set) per sequence
        "held_long": passkey_sequences(tok, sequences=8, seq_len=LONG_WINDOW, seed=SEED + 2000,
                                       min_length=LONG_WINDOW - 1),
    }
    files = {name: write_jsonl(texts, root / f"{name}.jsonl") for name, texts in data.items()}

    pretrained = train(str(init), out=root / "pretrained", data=str(files["pretrain"]), seq_len=L, **PRETRAIN,
                       **COMMON)
    pi0 = extend(str(pretrained), factor=FACTOR, out=root / "pi0")
    direct0 = _raise_window(pretrained, root / "direct0", LONG_WINDOW)
    pi_ft = train(str(pi0), out=root / "pi-ft", data=str(files["finetune"]), seq_len=LONG_WINDOW, **FINETUNE, **COMMON)
    direct_ft = train(str(direct0), out=root / "direct-ft", data=str(files["finetune"]), seq_len=LONG_WINDOW,
                      **FINETUNE, **COMMON)

    def retrieval(model: Path, lengths: str, beyond: bool = False) -> dict:
        """Accuracy over the extended-window lengths; for an extended model also over lengths inside L."""
        r = passkey(str(model), lengths=lengths, trials=TRIALS, seed=SEED, dtype="float32",
                    allow_beyond_window=beyond)
        per_length = {row["length"]: row["accuracy"] for row in r["summary"]["per_length"]}
        long = [acc for k, acc in per_length.items() if k > L]
        short = [acc for k, acc in per_length.items() if k <= L]
        return {"accuracy": sum(long or short) / len(long or short), "per_length": per_length,
                **({"short_accuracy": sum(short) / len(short)} if long and short else {})}

    def ppl(model: Path, window: int, beyond: bool = False) -> float:
        r = perplexity(str(model), data=str(files["held_long"]), windows=str(window), stride=L // 2,
                       dtype="float32", allow_beyond_window=beyond)
        return r["windows"][0]["perplexity"]

    runs = {
        "window": (pretrained, IN_WINDOW, L, False),  # the pretrained model inside its own window
        "extrapolation": (pretrained, LONG, LONG_WINDOW, True),
        # the extended models are also asked inside L, where PI compresses the positions the most
        "pi_0_steps": (pi0, f"{IN_WINDOW},{LONG}", LONG_WINDOW, False),
        "pi_finetuned": (pi_ft, f"{IN_WINDOW},{LONG}", LONG_WINDOW, False),
        "direct_finetuned": (direct_ft, f"{IN_WINDOW},{LONG}", LONG_WINDOW, False),
    }
    out = {name: {**retrieval(model, lengths, beyond), "ppl": ppl(model, window, beyond)}
           for name, (model, lengths, window, beyond) in runs.items()}
    print(f"\nreproduction seed {SEED}: " + json.dumps(out))
    return out


# -- the claims ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pretrained_model_retrieves_inside_its_window(repro):
    """The premise: pretraining at L taught retrieval (else nothing below would mean anything)."""
    assert repro["window"]["accuracy"] >= 0.4  # chance is ~0 (a 5-digit key); measured 0.45-1.00


@pytest.mark.slow
def test_extrapolation_fails(repro):
    """Plain RoPE at 4L: retrieval collapses and perplexity explodes (paper: > 10^3 for LLaMA-7B)."""
    ex, win = repro["extrapolation"], repro["window"]
    assert ex["per_length"][LONG_WINDOW - ANSWER] <= 0.1, ex  # at 4L itself
    assert ex["accuracy"] <= win["accuracy"] - 0.4
    # measured 2.04-10.80× over seeds 0-4 (module docstring); 1 would mean the longer window costs nothing
    assert ex["ppl"] >= 1.25 * win["ppl"], (ex["ppl"], win["ppl"])


@pytest.mark.slow
def test_pi_without_training_degrades(repro):
    """PI with 0 steps keeps positions in range but blurs them: here it retrieves nothing (paper: ppl 7.2 → 16)."""
    pi0, win = repro["pi_0_steps"], repro["window"]
    assert pi0["accuracy"] <= 0.1, pi0
    assert pi0["short_accuracy"] <= win["accuracy"] - 0.4, pi0  # even inside L: neighbours are 1/4 apart now
    assert pi0["ppl"] >= 1.5 * win["ppl"], (pi0["ppl"], win["ppl"])  # measured 2.80-9.23× over seeds 0-4


@pytest.mark.slow
def test_pi_finetune_recovers_perplexity(repro):
    """A few dozen PI steps at 4L bring perplexity back from the 0-step level to the model's own at L."""
    ft, pi0, win = repro["pi_finetuned"], repro["pi_0_steps"], repro["window"]
    assert ft["ppl"] <= pi0["ppl"] / 4, (ft["ppl"], pi0["ppl"])
    assert ft["ppl"] <= 1.1 * win["ppl"], (ft["ppl"], win["ppl"])


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="does not reproduce in this miniature: PI fine-tuned for 40 steps retrieves "
                                       "0% at 2L-4L and 0% inside L on seeds 0-4 (150 steps: <=5%); PI's 4x "
                                       "compression breaks the copy circuit's one-token attention; module docstring")
def test_pi_finetune_recovers_retrieval(repro):
    """Paper: after fine-tuning, PI retrieves across the whole extended window."""
    assert repro["pi_finetuned"]["accuracy"] >= 0.6, repro["pi_finetuned"]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="reversed in this miniature: after the same 40 steps direct fine-tuning "
                                       "retrieves 2-53% at 2L-4L (PI: 0%) and reaches ppl 1.063-1.076 (PI: "
                                       "1.120-1.140) on seeds 0-4; see the module docstring")
def test_direct_finetune_does_worse(repro):
    """Paper: direct fine-tuning without PI extends the effective window far more slowly."""
    pi, direct = repro["pi_finetuned"], repro["direct_finetuned"]
    assert pi["accuracy"] >= direct["accuracy"] + 0.3, (pi, direct)
    assert pi["ppl"] <= direct["ppl"], (pi["ppl"], direct["ppl"])


# -- the task generator ---------------------------------------------------------------------------
def test_passkey_sequences_pack_into_whole_sequences():
    """Every packed training sequence starts with a passkey document and ends with EOS: none is cut in two."""
    from posinterp.data.packing import PackedSequences
    from posinterp.data.tokens import encoder, eos_id
    from posinterp.evals.passkey import TASK
    from posinterp.evals.synthetic import passkey_sequences, passkey_tokenizer

    tok = passkey_tokenizer()
    for seq_len, max_length in ((128, None), (512, None), (512, 127)):
        texts = passkey_sequences(tok, sequences=50, seq_len=seq_len, seed=0, max_length=max_length)
        stream = PackedSequences(lambda texts=texts: texts, encoder(tok), eos_id(tok), seq_len, shuffle_buffer=1)
        for _ in range(50):
            seq = [int(t) for t in stream.take(1)[0]]
            assert seq[-1] == eos_id(tok)
            assert tok.decode(seq).startswith(TASK)
        assert stream.state()["carry"] == [] and stream.epoch == 0


def test_passkey_sequence_groups_are_the_sequences():
    """One group of documents per packed sequence (what lets experiments/miniature.py shuffle other
    sequences in between), and the flat list is the groups in order."""
    from posinterp.data.tokens import encoder
    from posinterp.evals.synthetic import passkey_sequence_groups, passkey_sequences, passkey_tokenizer

    tok = passkey_tokenizer()
    groups = passkey_sequence_groups(tok, sequences=20, seq_len=256, seed=3)
    assert len(groups) == 20
    encode = encoder(tok)
    for group in groups:
        assert sum(len(encode(text)) + 1 for text in group) == 256  # each document + its EOS fills the sequence
    assert passkey_sequences(tok, sequences=20, seq_len=256, seed=3) == [t for g in groups for t in g]
