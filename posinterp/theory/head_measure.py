"""Where each head attends, measured: the probes (text, a repeated random sequence, passkey prompts), one
forward with eager attention reduced layer by layer, and the figures `theory heads` and `train --eval-every` report:
the mass at offsets 1 and 2 of the previous-token heads, induction and copy mass at +1 and +2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.evals import common

PEAK_MIN = 0.3
"""A head 'peaks at offset d' when d has the most mass among offsets 0..K and at least this share."""


PROBES = ("text", "passkey")


def offset_profile(attn: Any, max_offset: int) -> Any:
    """(H, T, T) causal attention weights → (H, K + 3): mass at offsets 0..K, on key 0, and the rest.

    Averaged over queries i > K, so every offset 0..K exists for every query counted.
    """
    import torch

    k = int(max_offset)
    attn = attn.float()
    cols = [torch.diagonal(attn, offset=-d, dim1=-2, dim2=-1)[:, k + 1 - d:].mean(-1)  # queries i = j + d > K
            for d in range(k + 1)]
    near = torch.stack(cols, -1)  # (H, K+1)
    rows = attn[:, k + 1:, :]
    sink = rows[:, :, 0].mean(-1)
    tail = rows.sum(-1).mean(-1) - near.sum(-1) - sink  # row sums, not 1: bf16 weights do not sum to 1 exactly
    return torch.cat([near, sink[:, None], tail[:, None]], -1)


def diagonal_mean(attn: Any, offset: int, first_query: int, last_query: int | None = None) -> Any:
    """Mean over queries first_query ≤ i < last_query of attn[:, i, i − offset] → (H,)."""
    import torch

    diag = torch.diagonal(attn, offset=-int(offset), dim1=-2, dim2=-1)  # (H, T − offset): [:, j] = attn[:, j + offset, j]
    stop = None if last_query is None else int(last_query) - int(offset)
    return diag[:, int(first_query) - int(offset): stop].float().mean(-1)


def induction_scores(attn: Any, start: int, period: int) -> dict[str, Any]:
    """Repeat probe: tokens start..start+n−1 repeated at start+n..start+2n−1 (n = period).

    Queries of the second copy (i = start + n + j) on key start + j (duplicate), start + j + 1
    (induction: the token after the earlier occurrence) and start + j + 2 (skip) → (H,) each.
    """
    first, last = int(start) + int(period), int(start) + 2 * int(period)
    return {"duplicate": diagonal_mean(attn, period, first, last),
            "induction": diagonal_mean(attn, period - 1, first, last),
            "skip": diagonal_mean(attn, period - 2, first, last)}


def copy_scores(attn: Any, queries: list[int], targets: dict[str, list[list[int]]]) -> dict[str, Any]:
    """Mass each head puts, from query queries[q], on the positions targets[name][q] (summed) → (H,) per name."""
    out = {}
    for name, positions in targets.items():
        total = sum(attn[:, q, list(pos)].float().sum(-1) for q, pos in zip(queries, positions, strict=True))
        out[name] = total / len(queries)
    return out


def peak_offsets(profile: Any, max_offset: int) -> Any:
    """(..., K + 3) profiles → (...) argmax over offsets 0..K (numpy)."""
    import numpy as np

    return np.asarray(profile)[..., : int(max_offset) + 1].argmax(-1)


def find_all(seq: list[int], sub: list[int]) -> list[int]:
    """Start positions of every occurrence of `sub` in `seq`."""
    n = len(sub)
    return [p for p in range(len(seq) - n + 1) if seq[p: p + n] == sub]


@dataclass
class PasskeyProbe:
    """A passkey prompt followed by its answer, and where the copy scores read."""

    ids: list[int]
    key: str
    depth: float
    queries: list[int]
    """positions whose next token is an answer token holding a digit."""
    targets: dict[str, list[list[int]]]
    """per query: positions of the copy / skip / duplicate token in the key's earlier occurrences."""
    answer_tokens: list[int]
    skip_tokens: list[int | None]
    """per query: the token after the one to write (what a skipping copy would write)."""


def passkey_probes(tokenizer: Any, length: int, trials: int, seed: int) -> list[PasskeyProbe]:
    """`trials` prompts of exactly `length` tokens including the teacher-forced answer."""
    from posinterp.evals.passkey import PromptBuilder, make_key, trial_depths

    builder = PromptBuilder(tokenizer)
    probes = []
    for i, depth in enumerate(trial_depths(trials, 0)):
        key = make_key(seed, length, i)
        answer = builder.encode(" " + key)  # what the model writes after "The pass key is"
        need = builder.fixed(key) + len(answer) + 16
        if length < need:
            raise PosinterpError(f"--length {length} is shorter than a passkey prompt with its answer ({need} tokens); "
                                 f"give --length {max(need, 256)} or more")
        trial = builder.build(length - len(answer), depth, key, i)
        ids = list(trial.ids) + answer
        starts = find_all(list(trial.ids), answer)  # the key sentence holds the key twice
        if not starts:
            raise PosinterpError(f"the key {key} does not tokenize the same inside the prompt as in the answer; "
                                 "theory heads cannot locate its digits with this tokenizer")
        p0 = len(trial.ids)
        digit = [k for k, t in enumerate(answer) if any(c.isdigit() for c in tokenizer.decode([t]))]
        queries = [p0 - 1 + k for k in digit]  # the query at p0 − 1 + k predicts answer[k]
        targets = {name: [[s + k + shift for s in starts] for k in digit]
                   for name, shift in (("copy", 0), ("skip", 1), ("duplicate", -1))}
        skip_tokens = [ids[starts[0] + k + 1] for k in digit]
        probes.append(PasskeyProbe(ids, key, float(depth), queries, targets, [answer[k] for k in digit], skip_tokens))
    return probes


def repeat_probe(tokenizer: Any, vocab: int, length: int, seed: int) -> tuple[list[int], int, int]:
    """(ids, start, period): random non-special tokens r_0..r_{n−1} twice, after the tokenizer's BOS if any."""
    import numpy as np

    from posinterp.evals.passkey import PromptBuilder

    bos = PromptBuilder(tokenizer).bos
    period = (length - len(bos)) // 2
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pool = np.array([t for t in range(int(vocab)) if t not in special])
    rng = np.random.default_rng([int(seed), 13])
    tokens = [int(t) for t in rng.choice(pool, size=period)]
    return bos + tokens + tokens, len(bos), period


def text_probe(tokenizer: Any, data: str, split: str, length: int) -> tuple[list[int], list[str]]:
    from posinterp.theory.measure import text_ids

    return text_ids(tokenizer, data, split, length)


def attention_modules(model: Any) -> list[Any]:
    """The attention module of each decoder layer (the one whose output carries the weights)."""
    body = common.decoder(model)
    layers = getattr(body, "layers", None)
    mods = [getattr(layer, "self_attn", None) for layer in (layers or [])]
    if not mods or any(m is None for m in mods):
        raise PosinterpError(f"'{type(model).__name__}' has no layers[i].self_attn; theory heads supports "
                             "LLaMA-style decoders (LLaMA, Mistral, Qwen2, ...)")
    return mods


def run_reduced(model: Any, ids: list[int], reduce: Any, positions: list[int] | None = None
                ) -> tuple[list[dict[str, Any]], Any]:
    """One forward pass; `reduce(weights (H, T, T))` → {name: (H,…) tensor} per layer, as numpy.

    Returns (per-layer reductions, the final hidden states at `positions` or None).
    """
    import torch

    mods = attention_modules(model)
    found: dict[int, dict[str, Any]] = {}

    def hook(i: int):
        def fn(_module, _inputs, output):
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise PosinterpError("the attention modules return no weights; theory heads needs "
                                     "attn_implementation='eager'")
            found[i] = {k: v.float().cpu().numpy() for k, v in reduce(weights[0]).items()}
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(mods)]
    try:
        with torch.inference_mode():
            out = common.decoder(model)(input_ids=torch.tensor([ids], device=model.device), use_cache=False)
            hidden = out.last_hidden_state[0, positions] if positions is not None else None
    finally:
        for h in handles:
            h.remove()
    return [found[i] for i in range(len(mods))], hidden


def _stack(per_layer: list[dict[str, Any]], name: str) -> Any:
    import numpy as np

    return np.stack([layer[name] for layer in per_layer])  # (layers, H, …)


def head_sets(arrays: dict[str, Any], max_offset: int, top: int) -> dict[str, list[list[int]]]:
    """Previous-token heads and the top-k induction / passkey copy heads, as [layer, head] pairs."""
    import numpy as np

    prof = arrays["text_profile"]  # (layers, H, K+3)
    peak = peak_offsets(prof, max_offset)
    prev = np.argwhere((peak == 1) & (prof[..., 1] >= PEAK_MIN))

    def best(score: Any) -> list[list[int]]:
        flat = np.argsort(-score, axis=None, kind="stable")[:top]
        return [[int(a), int(b)] for a, b in zip(*np.unravel_index(flat, score.shape), strict=True)]

    return {"previous_token": [[int(a), int(b)] for a, b in prev],
            "induction": best(arrays["repeat_induction"]), "passkey_copy": best(arrays["passkey_copy"])}


def summarize(arrays: dict[str, Any], sets: dict[str, list[list[int]]], max_offset: int) -> dict:
    import numpy as np

    def pick(a: Any, heads: list[list[int]]) -> Any:
        return np.array([a[layer, head] for layer, head in heads]) if heads else np.zeros((0,) + a.shape[2:])

    def mean(a: Any) -> float | None:
        return float(a.mean()) if a.size else None

    out: dict[str, Any] = {}
    for probe in PROBES:
        prof = arrays[f"{probe}_profile"]
        peak = peak_offsets(prof, max_offset)
        mass_at_peak = np.take_along_axis(prof, peak[..., None], -1)[..., 0]
        counts = {str(d): int(((peak == d) & (mass_at_peak >= PEAK_MIN)).sum()) for d in range(max_offset + 1)}
        followed = pick(prof, sets["previous_token"])
        fpeak = peak_offsets(followed, max_offset) if len(followed) else np.zeros(0, int)
        out[probe] = {
            "heads_peaking_at": counts,
            "previous_token_heads": {
                "count": len(sets["previous_token"]),
                "mean_profile": [float(x) for x in followed.mean(0)] if len(followed) else None,
                "mass_at_1": mean(followed[:, 1]) if len(followed) else None,
                "mass_at_2": mean(followed[:, 2]) if len(followed) else None,
                "peak_offsets": {str(d): int((fpeak == d).sum()) for d in sorted(set(fpeak.tolist()))}}}
    ind = {k: pick(arrays[f"repeat_{k}"], sets["induction"]) for k in ("induction", "skip", "duplicate")}
    cp = {k: pick(arrays[f"passkey_{k}"], sets["passkey_copy"]) for k in ("copy", "skip", "duplicate")}
    out["repeat"] = {f"top_{k}": mean(v) for k, v in ind.items()}
    out["repeat"]["own_top_induction"] = float(np.sort(arrays["repeat_induction"], axis=None)[::-1]
                                               [: len(sets["induction"])].mean())
    out["passkey_copy"] = {f"top_{k}": mean(v) for k, v in cp.items()}
    return out


@dataclass
class Probes:
    """The three probe sequences of one measurement, built (or refused) before any weights are loaded."""

    length: int
    passkey: list[PasskeyProbe]
    repeat_ids: list[int]
    repeat_start: int
    period: int
    text_ids: list[int]
    documents: list[str]
    seed: int

    @classmethod
    def build(cls, tokenizer: Any, vocab: int, length: int, trials: int, seed: int, data: str, split: str) -> Probes:
        pk = passkey_probes(tokenizer, length, trials, seed)
        rep_ids, rep_start, period = repeat_probe(tokenizer, vocab, length, seed)
        text_ids, documents = text_probe(tokenizer, data, split, length)
        return cls(int(length), pk, rep_ids, rep_start, period, text_ids, documents, int(seed))


@dataclass
class Measured:
    arrays: dict[str, Any]
    """per-head arrays (layers, heads, …): text/passkey profiles, repeat and passkey copy scores."""
    trials: list[dict]
    """per passkey probe: what the model writes teacher-forced, digit by digit."""
    repeat_loss: float
    """mean next-token loss on the second copy of the repeat probe (in-context copying; ≈ 0 when it works)."""


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """The model's attention switched to eager (the only one that returns weights) for the block."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def measure(model: Any, probes: Probes, max_offset: int, timer: Any = None, progress: bool = False) -> Measured:
    """Run the three probes through `model` (in memory, any attention: eager for the call) and reduce each
    layer's attention weights as the pass goes. The model is left as it was. `progress`: a line per probe
    sequence with the ETA."""
    import numpy as np
    import torch

    from posinterp.evals.progress import Progress

    timer = timer or common.Timer()
    bar = Progress("theory heads", [len(probes.text_ids), len(probes.repeat_ids)] + [len(p.ids) for p in probes.passkey],
                   source="eager attention, timed from the first probe", enabled=progress)
    head, k = common.Head(model), int(max_offset)
    arrays: dict[str, Any] = {}
    with eager_attention(model), common.eval_mode(model):
        with timer("text"):
            layers, _ = run_reduced(model, probes.text_ids, lambda w: {"profile": offset_profile(w, k)})
            arrays["text_profile"] = _stack(layers, "profile")
            bar.done("text")
        with timer("repeat"):
            first, last = probes.repeat_start + probes.period, probes.repeat_start + 2 * probes.period - 1
            layers, hidden = run_reduced(model, probes.repeat_ids,
                                         lambda w: induction_scores(w, probes.repeat_start, probes.period),
                                         positions=list(range(first, last)))
            for name in ("induction", "skip", "duplicate"):
                arrays[f"repeat_{name}"] = _stack(layers, name)
            targets = torch.tensor(probes.repeat_ids[first + 1: last + 1], device=hidden.device)
            repeat_loss = float(-head.log_probs_of(hidden, targets).mean())
            bar.done("repeated random tokens")
        trials = []
        with timer("passkey"):
            acc: dict[str, list[Any]] = {}
            for p in probes.passkey:
                def reduce(w, p=p):
                    return {"profile": offset_profile(w, k), **copy_scores(w, p.queries, p.targets)}
                layers, hidden = run_reduced(model, p.ids, reduce, positions=p.queries)
                for name in ("profile", "copy", "skip", "duplicate"):
                    acc.setdefault(name, []).append(_stack(layers, name))
                pred = head.logits(hidden).argmax(-1).tolist()
                bar.done(f"passkey key at depth {p.depth:.2f}")
                trials.append({"key": p.key, "depth": round(p.depth, 4), "queries": p.queries,
                               "written": None, "predicted": pred, "digits_right": sum(
                                   int(a == b) for a, b in zip(pred, p.answer_tokens, strict=True)),
                               "digits_skipped": sum(int(s is not None and a == s and s != b) for a, s, b in
                                                     zip(pred, p.skip_tokens, p.answer_tokens, strict=True)),
                               "digits": len(p.queries)})
            for name, values in acc.items():
                arrays["passkey_profile" if name == "profile" else f"passkey_{name}"] = np.mean(values, axis=0)
    return Measured(arrays, trials, repeat_loss)


def figures(measured: Measured, sets: dict[str, list[list[int]]], max_offset: int) -> dict:
    """The few numbers a curve follows: the followed previous-token heads' mass at offsets 1 and 2 (text),
    their mean mass at every offset 0..K and how many of them peak where (PI ×s moves the peak towards s),
    the copy heads' mass at +1 (the token to write) and +2 (the one after it) on the repeat probe
    (induction) and on passkey keys, the repeat loss and the teacher-forced key-digit accuracy."""
    summary = summarize(measured.arrays, sets, max_offset)
    prev = summary["text"]["previous_token_heads"]
    digits = sum(t["digits"] for t in measured.trials)
    return {"previous_token_heads": prev["count"], "previous_token_mass_1": prev["mass_at_1"],
            "previous_token_mass_2": prev["mass_at_2"],
            "previous_token_profile": prev["mean_profile"], "previous_token_peaks": prev["peak_offsets"],
            "induction_1": summary["repeat"]["top_induction"], "induction_2": summary["repeat"]["top_skip"],
            "copy_1": summary["passkey_copy"]["top_copy"], "copy_2": summary["passkey_copy"]["top_skip"],
            "repeat_loss": measured.repeat_loss,
            "teacher_forced_digit_accuracy": sum(t["digits_right"] for t in measured.trials) / digits if digits else None}
