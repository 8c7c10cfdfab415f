"""The `theory heads` verb: where each attention head looks, by relative offset, and which heads copy.

    flock /tmp/posinterp-cpu.lock posinterp theory heads smollm2-135m --length 2048 --out runs/heads/none
    flock /tmp/posinterp-cpu.lock posinterp theory heads smollm2-135m --rope pi:2 \
        --reference runs/heads/none/heads.json --out runs/heads/pi2

Why. PI ×s divides every position by s, so the rotation a head saw at offset 1 during training is the
rotation at offset s afterwards. A head that finds "one token back" by that rotation would then look
s tokens back; a copy circuit built on it would continue a copied key from the digit after next
(the hypothesis of issue 13 for answers like 52537 → 5557). This verb measures it.

Method. The model is loaded with eager attention (`--rope` applied to its config on the fly, as the
evals do) and forward hooks on the attention modules reduce each layer's (heads, T, T) weights as the
pass goes, so memory stays one layer's T² per head. Three probes of exactly `--length` tokens:

- text: the first `--length` tokens of `--data` (held-out Gutenberg: hamlet first);
- passkey: `--trials` prompts of `posinterp.evals.passkey` (keys at depths spread over 0..1), each
  followed by its correct answer (" 52537" is ' ', '5', '2', … in SmolLM2), teacher-forced;
- repeat: random tokens r_0 … r_{n−1} twice (n = length // 2, seeded).

Per head: the attention mass at relative offsets 0..K (`--max-offset`), on the first key (the
"sink", when it is farther than K) and on everything else (tail), averaged over the queries i > K,
on text and on passkey prompts; the peak offset is the argmax over 0..K. On the repeat probe, queries
in the second copy at position n + j give the standard induction score, attention on j + 1 (the token
after the earlier occurrence of the current token), with the duplicate-token score (on j) and the
skip score (on j + 2, the token after next) beside it. On the passkey prompts, the queries whose next
token is a key digit give the same three scores against the key's earlier occurrences in the prompt
(the key appears twice): copy (the digit to write), skip (the digit after it), duplicate (the current
digit). The model's teacher-forced argmax there tells whether it would write the digit or skip it.

Previous-token heads are heads peaking at offset 1 with at least PEAK_MIN of their mass there; copy
heads are the `--top` heads by induction (or passkey copy) score. With `--reference heads.json` (the
same model measured with `--rope none`, say), those head sets are taken from the reference, so the
summary follows the original previous-token and copy heads into the model measured here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg, as_config, at_least
from posinterp.errors import PosinterpError
from posinterp.evals import common

log = logging.getLogger(__name__)

PEAK_MIN = 0.3
"""A head 'peaks at offset d' when d has the most mass among offsets 0..K and at least this share."""
HEADS_JSON = "heads.json"
HEADS_PNG = "heads.png"
PROBES = ("text", "passkey")
TRIALS = 3
"""Passkey probes per measurement (`--trials`, and train --eval-every's heads figures)."""
MAX_OFFSET = 8
"""Offsets 0..K measured per head (`--max-offset`)."""
TOP = 10
"""Copy heads summarized (`--top`)."""


@dataclass
class HeadsConfig(common.EvalConfig):
    length: int = arg(2048, help="tokens in each probe sequence (text window, passkey prompt with its answer, "
                                 "repeated random tokens)")
    data: str = arg("gutenberg", help="natural text probe: gutenberg, pydoc, or files/globs")
    split: str = arg("test", help="corpus split of the text probe", choices=("train", "test", "all"))
    trials: int = arg(TRIALS, help="passkey prompts, keys at depths spread over 0..1")
    max_offset: int = arg(MAX_OFFSET, help="relative offsets 0..K get a bucket each; the first key and the rest get one each")
    top: int = arg(TOP, help="copy heads summarized: the top-k heads by induction / passkey copy score")
    reference: Path | None = arg(None, help="heads.json of a reference measurement (e.g. --rope none): follow its "
                                            "previous-token and copy heads here (default: this model's own)")
    out: Path | None = arg(None, help=f"folder for {HEADS_JSON} and {HEADS_PNG} (none: print only)")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("--length", self.length, 2, " tokens")
        at_least("--max-offset", self.max_offset, 2, " (offsets 1 and 2 are the point)")
        if int(self.length) < 2 * (int(self.max_offset) + 2):
            raise PosinterpError(f"--length {self.length} must be at least {2 * (int(self.max_offset) + 2)} for "
                                 f"--max-offset {self.max_offset} (the repeat probe needs two copies longer than it)")
        at_least("--trials", self.trials, 1)
        at_least("--top", self.top, 1, " heads")
        if self.reference is not None:
            self.reference = reference_file(self.reference, "--reference")


def reference_file(path: Path | str, flag: str) -> Path:
    """The heads.json of an earlier measurement (a folder means its heads.json); refused in one line if absent."""
    path = Path(path)
    if path.is_dir():
        path = path / HEADS_JSON
    if not path.is_file():
        raise PosinterpError(f"{flag} {path} is not a file; give the {HEADS_JSON} of an earlier "
                             "`posinterp theory heads --out` run")
    return path


# ---------------------------------------------------------------- pure reductions of one layer's weights

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


# ---------------------------------------------------------------- probes

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
    from posinterp.theory_measure import text_ids

    return text_ids(tokenizer, data, split, length)


# ---------------------------------------------------------------- running the model with reducing hooks

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


# ---------------------------------------------------------------- summary

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


# ---------------------------------------------------------------- one measurement (the verb and train --eval-every)

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
    the copy heads' mass at +1 (the token to write) and +2 (the one after it) on the repeat probe
    (induction) and on passkey keys, the repeat loss and the teacher-forced key-digit accuracy."""
    summary = summarize(measured.arrays, sets, max_offset)
    prev = summary["text"]["previous_token_heads"]
    digits = sum(t["digits"] for t in measured.trials)
    return {"previous_token_heads": prev["count"], "previous_token_mass_1": prev["mass_at_1"],
            "previous_token_mass_2": prev["mass_at_2"],
            "induction_1": summary["repeat"]["top_induction"], "induction_2": summary["repeat"]["top_skip"],
            "copy_1": summary["passkey_copy"]["top_copy"], "copy_2": summary["passkey_copy"]["top_skip"],
            "repeat_loss": measured.repeat_loss,
            "teacher_forced_digit_accuracy": sum(t["digits_right"] for t in measured.trials) / digits if digits else None}


# ---------------------------------------------------------------- the verb

def heads(cfg: HeadsConfig | str | None = None, **kwargs) -> dict:
    """Per layer and head: attention mass by offset (text, passkey), induction and passkey copy scores.

    `heads("smollm2-135m", rope="pi:2", length=2048, out="runs/heads/pi2")` → dict (printed; JSON + PNG in `out`).
    """
    import numpy as np
    import torch

    from posinterp import models
    from posinterp.atomic import atomic_dir, write_json
    from posinterp.corpus import describe

    cfg = as_config(HeadsConfig, cfg, kwargs)
    started = time.perf_counter()
    common.check_output(cfg)
    prep = common.prepare(cfg, int(cfg.length), "probe length", "--length")
    n_layers, n_heads = int(prep.config.num_hidden_layers), int(prep.config.num_attention_heads)
    reference = load_reference(cfg.reference, n_layers, n_heads, cfg.max_offset)
    tokenizer = models.load_tokenizer(models.dense(prep.ref))
    length, k = int(cfg.length), int(cfg.max_offset)
    # every probe is built (and refused, if it cannot be) before the weights are loaded
    probes = Probes.build(tokenizer, prep.config.vocab_size, length, int(cfg.trials), int(cfg.seed), cfg.data, cfg.split)
    timer = common.Timer()
    with timer("load"):
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
        model, _ = models.load_model(models.dense(prep.ref), rope=cfg.rope_spec, original_length=cfg.original_length,
                                     dtype=dtype, device=models.pick_device(cfg.device), attn_implementation="eager")
    measured = measure(model, probes, k, timer, progress=True)
    del model
    arrays, trials = measured.arrays, measured.trials
    for t in trials:
        t["written"] = tokenizer.decode(t.pop("predicted"))

    own = head_sets(arrays, k, int(cfg.top))
    sets = reference["head_sets"] if reference is not None else own
    digits = sum(t["digits"] for t in trials)
    result = {
        **common.header("theory_heads", cfg, prep),
        "length": length, "max_offset": k, "peak_min": PEAK_MIN, "buckets": [str(d) for d in range(k + 1)]
        + ["sink", "tail"],
        "layers": n_layers, "heads": n_heads,
        "probes": {"text": {"data": describe(cfg.data, cfg.split), "documents": probes.documents,
                            "tokens": len(probes.text_ids)},
                   "repeat": {"start": probes.repeat_start, "period": probes.period, "seed": int(cfg.seed),
                              "loss": measured.repeat_loss},
                   "passkey": {"trials": trials, "teacher_forced_digit_accuracy": sum(t["digits_right"] for t in trials)
                               / digits, "teacher_forced_skip_share": sum(t["digits_skipped"] for t in trials) / digits}},
        "reference": str(cfg.reference) if cfg.reference is not None else None,
        "head_sets": own, "followed_head_sets": sets,
        "summary": summarize(arrays, sets, k),
        "figures": figures(measured, sets, k),
        "per_head": {name: np.round(a, 6).tolist() for name, a in arrays.items()},
        "timings": {**timer.seconds, "total": round(time.perf_counter() - started, 3)},
    }
    print_table(result)
    if cfg.out is not None:
        with atomic_dir(cfg.out, cfg.force) as tmp:
            write_json(tmp / HEADS_JSON, result)
            plot_heads(tmp / HEADS_PNG, result)
        log.info("wrote %s", cfg.out)
    return result


def load_reference(path: Path | None, n_layers: int, n_heads: int, max_offset: int) -> dict | None:
    if path is None:
        return None
    try:
        ref = json.loads(Path(path).read_text())
        shape = (int(ref["layers"]), int(ref["heads"]))
        ref["head_sets"]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError):
        raise PosinterpError(f"--reference {path} is not a {HEADS_JSON} written by `posinterp theory heads`") from None
    if shape != (n_layers, n_heads):
        raise PosinterpError(f"--reference {path} measured {shape[0]} layers × {shape[1]} heads; this model has "
                             f"{n_layers} × {n_heads}: give a reference of the same architecture")
    return ref


# ---------------------------------------------------------------- table and figures

def _f(x: float | None, fmt: str = ".3f") -> str:
    return "—" if x is None else format(x, fmt)


def table_rows(result: dict) -> list[tuple[str, str]]:
    """(figure, value) rows of the short table, shared by the verb's print and the experiment script."""
    s = result["summary"]
    pk = result["probes"]["passkey"]
    rows = []
    for probe in PROBES:
        c = s[probe]["heads_peaking_at"]
        prev = s[probe]["previous_token_heads"]
        rows += [(f"{probe}: heads peaking at offset 0 / 1 / 2 / 3+", f"{c['0']} / {c['1']} / {c['2']} / "
                  f"{sum(v for d, v in c.items() if int(d) >= 3)}"),
                 (f"{probe}: prev-token heads ({prev['count']}) mass at 1 / 2", f"{_f(prev['mass_at_1'])} / "
                  f"{_f(prev['mass_at_2'])}"),
                 (f"{probe}: prev-token heads' peak offsets", ", ".join(f"{d}: {n}" for d, n in
                                                                        prev["peak_offsets"].items()) or "—")]
    r, c = s["repeat"], s["passkey_copy"]
    rows += [("repeat: top induction heads, induction / skip / dup", f"{_f(r['top_induction'])} / {_f(r['top_skip'])} / "
              f"{_f(r['top_duplicate'])}"),
             ("passkey: top copy heads, copy / skip / dup", f"{_f(c['top_copy'])} / {_f(c['top_skip'])} / "
              f"{_f(c['top_duplicate'])}"),
             ("passkey: teacher-forced digits right / skipped", f"{pk['teacher_forced_digit_accuracy']:.2f} / "
              f"{pk['teacher_forced_skip_share']:.2f}")]
    return rows


def print_table(result: dict) -> None:
    follow = f"heads of {result['reference']}" if result["reference"] else "its own heads"
    print(f"{result['label']} ({result['rope']}, {result['config']['dtype']}): {result['layers']} layers × "
          f"{result['heads']} heads, probes of {result['length']} tokens; following {follow}")
    rows = table_rows(result)
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")
    print(f"  seconds: {result['timings']}")


def _figure(width: float, height: float, rows: int, cols: int) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_heads(path: Path, result: dict) -> None:
    """Four panels: offset 1 vs 2 per head, the previous-token heads' profile, induction, passkey copy."""
    import numpy as np

    ph = {k: np.asarray(v) for k, v in result["per_head"].items()}
    sets = result["followed_head_sets"]
    fig, ax = _figure(13, 9, 2, 2)
    prev = sets["previous_token"]
    text = ph["text_profile"]
    a = ax[0][0]
    a.scatter(text[..., 1].ravel(), text[..., 2].ravel(), s=8, c="0.6", label="all heads")
    if prev:
        a.scatter([text[h, i, 1] for h, i in prev], [text[h, i, 2] for h, i in prev], s=18, c="tab:red",
                  label="previous-token heads" + (" (reference)" if result["reference"] else ""))
    a.plot([0, 1], [0, 1], "k--", lw=0.7)
    a.set(xlabel="text: mass at offset 1", ylabel="text: mass at offset 2", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
          title="per head, natural text")
    a.legend(fontsize=8)
    a = ax[0][1]
    offsets = np.arange(result["max_offset"] + 1)
    for probe, color in (("text", "tab:blue"), ("passkey", "tab:orange")):
        prof = ph[f"{probe}_profile"]
        for h, i in prev:
            a.plot(offsets, prof[h, i, : len(offsets)], color=color, lw=0.5, alpha=0.4)
        if prev:
            a.plot(offsets, np.mean([prof[h, i, : len(offsets)] for h, i in prev], 0), color=color, lw=2,
                   label=f"{probe}, mean of {len(prev)} heads")
    a.set(xlabel="relative offset (tokens back)", ylabel="attention mass", title="previous-token heads by offset",
          xticks=offsets)
    if prev:
        a.legend(fontsize=8)
    else:  # a legend with nothing to label is a matplotlib warning on the user's screen
        a.text(0.5, 0.5, "no previous-token heads", ha="center", va="center", transform=a.transAxes, fontsize=9)
    for a, (probe, keys, title) in zip(ax[1], (("repeat", ("induction", "skip"), "repeated random tokens"),
                                               ("passkey", ("copy", "skip"), "passkey digits (teacher-forced)")),
                                       strict=True):
        x, y = ph[f"{probe}_{keys[0]}"], ph[f"{probe}_{keys[1]}"]
        top = sets["induction" if probe == "repeat" else "passkey_copy"]
        a.scatter(x.ravel(), y.ravel(), s=8, c="0.6", label="all heads")
        a.scatter([x[h, i] for h, i in top], [y[h, i] for h, i in top], s=18, c="tab:green",
                  label=f"top {len(top)} {'induction' if probe == 'repeat' else 'copy'} heads"
                  + (" (reference)" if result["reference"] else ""))
        a.plot([0, 1], [0, 1], "k--", lw=0.7)
        a.set(xlabel=f"{keys[0]}: token after the earlier occurrence", ylabel="skip: the token after that",
              xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=title)
        a.legend(fontsize=8)
    fig.suptitle(f"{result['label']}: where the heads attend ({result['config']['dtype']}, {result['length']} tokens)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def plot_compare(path: Path, results: list[tuple[str, dict]]) -> None:
    """Several measurements (same heads followed): previous-token profile, induction and copy vs skip."""
    import numpy as np

    fig, ax = _figure(14, 4.6, 1, 3)
    width = 0.8 / max(len(results), 1)
    for n, (name, r) in enumerate(results):
        prev = r["summary"]["text"]["previous_token_heads"]
        if prev["mean_profile"]:
            ax[0][0].plot(np.arange(r["max_offset"] + 1), prev["mean_profile"][: r["max_offset"] + 1], marker="o",
                          ms=3, label=name)
        for a, key, parts in ((ax[0][1], "repeat", ("induction", "skip", "duplicate")),
                              (ax[0][2], "passkey_copy", ("copy", "skip", "duplicate"))):
            vals = [r["summary"][key][f"top_{p}"] or 0.0 for p in parts]
            a.bar(np.arange(len(parts)) + n * width, vals, width, label=name)
            a.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, parts)
    ax[0][0].set(xlabel="relative offset", ylabel="mean attention mass", title="previous-token heads (natural text)")
    ax[0][1].set(ylabel="mean attention mass", title="top induction heads (repeated random tokens)")
    ax[0][2].set(ylabel="mean attention mass", title="top copy heads (passkey digits)")
    for a in ax[0]:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
