"""Passkey retrieval and the effective context window k_max (the paper's protocol).

    posinterp eval passkey runs/smollm2-16k --lengths 1024:16384:16 --trials 10 --out results/pk
    posinterp eval passkey smollm2-135m --rope yarn:2 --lengths 16384

A prompt hides a random 5-digit key at some depth inside repeated filler (the template of
Mohtashami & Jaggi 2023, used by the paper):

    <task sentence>\\n<filler…>\\n<key sentence>\\n<filler…>\\n What is the pass key? The pass key is

Prompts are assembled from token ids, so each has exactly the asked number of the model's own
tokens (decoding and re-encoding it stays within 1%). The model answers greedily with a KV cache;
the answer is the first run of exactly 5 digits in what it writes. k_max is the largest length k
such that every length ≤ k succeeds in at least 20% of its trials.

Speed: prompts share a prefix (task sentence + filler up to the key), so the filler stream is run
once and each trial whose key lies deep enough in its prompt continues from the cache
cropped at its key position (`--share-prefix`); the others get their own prefill, which is cheaper
for them (see `run_trials`). The keys and values of the first m tokens depend only on those tokens,
so this is the same computation as one prefill per prompt, less the repeated prefix. Dynamic NTK
rescales RoPE with the running length, so there every prompt gets its own prefill.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import Any

from posinterp.cli import arg, as_config, at_least
from posinterp.errors import PosinterpError
from posinterp.evals import common
from posinterp.evals.progress import priced

log = logging.getLogger(__name__)

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
SUCCESS_RATE = 0.2
"""k_max counts a length as retrieved when at least this share of its trials succeed (the paper's 20%)."""
BRANCH_FROM = 0.45
"""A prompt branches from the shared prefix when the prefix is at least this share of it (see `run_trials`)."""
HEATMAP = "heatmap.png"
ACCURACY = "accuracy.png"


@dataclass
class PasskeyConfig(common.EvalConfig):
    lengths: str = arg("", help="prompt lengths in the model's tokens: a,b,c or start:stop:count "
                                "(default: the paper's 32 lengths spread uniformly up to the window)")
    trials: int = arg(10, help="prompts per length, each with its own random key")
    depths: int = arg(0, help="number of key depths on a uniform grid 0..1 (trials cycle through them); "
                              "0: the trials of a length are spread uniformly over 0..1")
    max_new_tokens: int = arg(8, help="tokens decoded greedily for the answer")
    share_prefix: bool = arg(True, help="run the shared filler prefix once and branch each prompt from its cache")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("--trials", self.trials, 1, " (the paper uses 10)")
        if int(self.depths) < 0:
            raise PosinterpError(f"--depths {self.depths} must be 0 (spread the trials) or a number of depths ≥ 1")
        at_least("--max-new-tokens", self.max_new_tokens, 1, " (a key needs about 6)")
        if self.lengths:
            common.parse_lengths(self.lengths)


# --- prompts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    length: int
    index: int
    depth: float
    key: str
    ids: tuple[int, ...]
    prefix_len: int
    """tokens before the key's line (task sentence + filler): the part prompts share."""
    key_position: int
    """token index where the key sentence starts."""
    filler_tokens: int
    filler_before: int


class PromptBuilder:
    """The paper's template, assembled from token ids so a prompt has exactly the asked length."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        enc = self.encode = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        special, plain = list(tokenizer("a")["input_ids"]), enc("a")
        # whatever the tokenizer adds before text (a BOS for LLaMA, nothing for SmolLM2)
        self.bos = special[: len(special) - len(plain)] if special[len(special) - len(plain):] == plain else []
        self.newline = enc("\n")
        self.head = self.bos + enc(TASK) + self.newline
        self.question = self.newline + enc(QUESTION)
        # the filler repeated is 'FILLER FILLER …': the first block without a leading space
        self._blocks = (enc(FILLER), enc(" " + FILLER))
        period = enc(".")
        self._ends = tuple([i + 1 for i, t in enumerate(b) if [t] == period] or [len(b)] for b in self._blocks)
        self._stream: list[int] = []

    def key_ids(self, key: str) -> list[int]:
        return self.newline + self.encode(KEY.format(key=key)) + self.newline

    def stream(self, n: int) -> list[int]:
        """The first n tokens of the filler repeated, as the joined text would tokenize."""
        while len(self._stream) < n:
            self._stream += self._blocks[0] if not self._stream else self._blocks[1]
        return self._stream[:n]

    def boundary(self, n: int, limit: int) -> int:
        """The sentence end in the filler stream nearest to token n and not beyond `limit` (the key goes there)."""
        first, block = len(self._blocks[0]), len(self._blocks[1])
        candidates = [0] + list(self._ends[0])
        k = max(0, (n - first) // block)
        for b in (k - 1, k, k + 1):
            if b >= 0:
                candidates += [first + b * block + e for e in self._ends[1]]
        fits = [c for c in candidates if c <= limit] or [0]
        return min(fits, key=lambda c: (abs(c - n), c))

    def fixed(self, key: str) -> int:
        """Tokens of the template that are not filler."""
        return len(self.head) + len(self.key_ids(key)) + len(self.question)

    def build(self, length: int, depth: float, key: str, index: int = 0) -> Trial:
        filler = length - self.fixed(key)
        if filler < 1:
            raise PosinterpError(f"--lengths {length} is shorter than the passkey template itself "
                                 f"({self.fixed(key)} tokens); give lengths ≥ {self.fixed(key) + 64}")
        before = self.boundary(round(depth * filler), filler)
        ids = self.head + self.stream(before) + self.key_ids(key) + self.stream(filler - before) + self.question
        assert len(ids) == length, (len(ids), length)
        prefix = len(self.head) + before
        return Trial(length, index, float(depth), key, tuple(ids), prefix, prefix + len(self.newline), filler, before)

    def text(self, trial: Trial) -> str:
        return self.tokenizer.decode(list(trial.ids))


def trial_depths(trials: int, depths: int) -> list[float]:
    """The depth of each trial: a uniform grid of `depths` cycled, or the trials spread over 0..1."""
    if depths:
        grid = [0.5] if depths == 1 else [i / (depths - 1) for i in range(depths)]
        return [grid[i % depths] for i in range(trials)]
    return [0.5] if trials == 1 else [i / (trials - 1) for i in range(trials)]


def make_key(seed: int, length: int, index: int) -> str:
    """A random 5-digit key that depends only on (seed, length, trial), not on the other lengths asked."""
    return str(random.Random(f"passkey:{seed}:{length}:{index}").randint(10000, 99999))


def build_trials(builder: PromptBuilder, lengths: list[int], trials: int, depths: int, seed: int) -> list[Trial]:
    return [builder.build(length, depth, make_key(seed, length, i), i)
            for length in lengths for i, depth in enumerate(trial_depths(trials, depths))]


# --- scoring -------------------------------------------------------------------------------------

_FIVE = re.compile(r"(?<!\d)\d{5}(?!\d)")


def parse_answer(text: str) -> str | None:
    """The first run of exactly five digits in the model's continuation (None when there is none)."""
    match = _FIVE.search(text)
    return match.group(0) if match else None


def k_max(accuracy: dict[int, float], threshold: float = SUCCESS_RATE) -> int:
    """Largest length k such that every length ≤ k has accuracy ≥ threshold (0 when the shortest fails)."""
    best = 0
    for length in sorted(accuracy):
        if accuracy[length] + 1e-12 < threshold:
            break
        best = length
    return best


# --- decoding ------------------------------------------------------------------------------------


class Decoder:
    """Greedy decoding with a KV cache: the body gives hidden states, the fp32 head scores the last one."""

    def __init__(self, model: Any, max_new_tokens: int) -> None:
        import inspect

        self.model = model
        self.body = common.decoder(model)
        self.head = common.Head(model)
        self.max_new_tokens = int(max_new_tokens)
        params = inspect.signature(self.body.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        eos = getattr(model.generation_config, "eos_token_id", None) if getattr(model, "generation_config", None) else None
        eos = eos if eos is not None else getattr(model.config, "eos_token_id", None)
        self.eos = set(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])

    def forward(self, ids: list[int], cache: Any = None) -> tuple[Any, Any]:
        """Run `ids` after `cache` (None: from the start) → (last hidden state (D,), the grown cache)."""
        import torch

        kwargs = {self.cache_arg: cache} if cache is not None else {}
        out = self.body(input_ids=torch.tensor([ids], dtype=torch.long, device=self.model.device), use_cache=True,
                        **kwargs)
        grown = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.last_hidden_state[0, -1], grown

    def continue_greedy(self, hidden: Any, cache: Any) -> list[int]:
        """Greedy tokens from the hidden state of the prompt's last token."""
        new: list[int] = []
        for step in range(self.max_new_tokens):
            token = int(self.head.logits(hidden).argmax())
            new.append(token)
            if token in self.eos or step == self.max_new_tokens - 1:
                break
            hidden, cache = self.forward([token], cache)
        return new

    def generate(self, ids: list[int]) -> list[int]:
        """One prefill forward + greedy decode."""
        hidden, cache = self.forward(list(ids))
        return self.continue_greedy(hidden, cache)


def crop(cache: Any, length: int) -> Any:
    """A new cache holding the first `length` positions of `cache` (views; `cache` is not changed)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k[..., :length, :], v[..., :length, :]) for k, v, *_ in cache])


def run_trials(model: Any, tokenizer: Any, trials: list[Trial], *, max_new_tokens: int = 8,
               share_prefix: bool = True, progress: bool = True) -> list[dict]:
    """Answer every trial; returns one record per trial (in the order given)."""
    dec = Decoder(model, max_new_tokens)
    rope_type = common.rope_parameters(model.config).get("rope_type")
    # a branched prompt runs its suffix against the cached prefix with an explicit mask, which the
    # attention kernel cannot skip half of as it does for a causal prefill; that pays only when the
    # prefix is most of the prompt (BRANCH_FROM), so shallower keys get their own prefill
    branch = [i for i, t in enumerate(trials) if t.prefix_len >= BRANCH_FROM * t.length] if share_prefix else []
    if rope_type == "dynamic" or len(branch) < 2:
        branch = []
    if branch:
        longest = max((trials[i] for i in branch), key=lambda t: t.prefix_len)
        prefix = list(longest.ids[: longest.prefix_len])
        if not all(list(trials[i].ids[: trials[i].prefix_len]) == prefix[: trials[i].prefix_len] for i in branch):
            branch = []
    outputs: dict[int, list[int]] = {}
    # one line per prompt with the ETA, each priced by its prefill and decoding (or weighted by its length)
    bar = priced("passkey", model, trials, lambda sp, t: sp.forward_s(t.length) + max_new_tokens
                 * sp.decode_token_s(t.length), lambda t: t.length, enabled=progress)

    def report(t: Trial) -> None:
        bar.done(f"length {t.length} depth {t.depth:.2f}")

    with common.eval_mode(model):
        for i, t in enumerate(trials):
            if i not in branch:
                outputs[i] = dec.generate(list(t.ids))
                report(t)
        if branch:
            _, full = dec.forward(prefix)  # the filler stream up to the deepest key, once
            for i in sorted(branch, key=lambda i: trials[i].prefix_len):
                t = trials[i]
                hidden, cache = dec.forward(list(t.ids[t.prefix_len:]), crop(full, t.prefix_len))
                outputs[i] = dec.continue_greedy(hidden, cache)
                report(t)
            del full
    records = []
    for i, t in enumerate(trials):
        text = tokenizer.decode(outputs[i], skip_special_tokens=True)
        answer = parse_answer(text)
        records.append({"length": t.length, "trial": t.index, "depth": round(t.depth, 4), "key": t.key,
                        "key_position": t.key_position, "tokens": len(t.ids), "output": text, "answer": answer,
                        "correct": answer == t.key})
    return records


def summarize(records: list[dict]) -> dict:
    """Per-length and per-depth accuracy, the length × depth grid, and k_max."""
    by_length: dict[int, list[bool]] = {}
    by_depth: dict[float, list[bool]] = {}
    grid: dict[tuple[int, float], list[bool]] = {}
    for r in records:
        by_length.setdefault(r["length"], []).append(r["correct"])
        by_depth.setdefault(r["depth"], []).append(r["correct"])
        grid.setdefault((r["length"], r["depth"]), []).append(r["correct"])
    acc = {k: sum(v) / len(v) for k, v in sorted(by_length.items())}
    depths = sorted(by_depth)
    return {
        "k_max": k_max(acc),
        "accuracy": sum(r["correct"] for r in records) / len(records),
        "per_length": [{"length": k, "accuracy": acc[k], "trials": len(by_length[k])} for k in acc],
        "per_depth": [{"depth": d, "accuracy": sum(by_depth[d]) / len(by_depth[d]), "trials": len(by_depth[d])}
                      for d in depths],
        "grid": {"lengths": list(acc), "depths": depths,
                 "accuracy": [[(sum(grid[(k, d)]) / len(grid[(k, d)])) if (k, d) in grid else None for d in depths]
                              for k in acc]},
    }


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [f"# Passkey retrieval: {result['label']}\n",
             f"- model: `{result['model']}`, rope: `{result['rope']}` ({result['rope_parameters']}), "
             f"window {result['window']}, allow_beyond_window: {result['allow_beyond_window']}",
             f"- trials per length: {result['config']['trials']}, seed {result['config']['seed']}, "
             f"dtype {result['config']['dtype']}",
             f"- **k_max = {s['k_max']}** (largest length with every length up to it ≥ {SUCCESS_RATE:.0%} retrieved); "
             f"overall accuracy {s['accuracy']:.1%}",
             f"- time: {result['timings']}\n"]
    lines.append(common.md_table(["length", "accuracy", "trials"],
                                 [[r["length"], f"{r['accuracy']:.0%}", r["trials"]] for r in s["per_length"]]))
    lines.append(common.md_table(["depth", "accuracy", "trials"],
                                 [[r["depth"], f"{r['accuracy']:.0%}", r["trials"]] for r in s["per_depth"]]))
    return "\n".join(lines)


def passkey(cfg: PasskeyConfig | str | None = None, **kwargs) -> dict:
    """Run passkey retrieval; returns (and writes to --out) the results dict.

    `passkey("smollm2-135m", lengths="2048,8192", trials=3)` or `passkey(PasskeyConfig(...))`.
    """
    cfg = as_config(PasskeyConfig, cfg, kwargs)
    common.check_output(cfg)
    from posinterp.model import refs

    lengths = common.parse_lengths(cfg.lengths) if cfg.lengths else None
    prep = common.prepare(cfg, max(lengths) if lengths else 0, "prompt length", "--lengths")
    if lengths is None:  # the paper: 32 lengths spread uniformly up to the window
        lengths = common.parse_lengths(f"{prep.window // 32}:{prep.window}:32")
    timer = common.Timer()
    with timer("build_prompts"):
        tokenizer = refs.load_tokenizer(refs.dense(prep.ref))
        builder = PromptBuilder(tokenizer)
        trials = build_trials(builder, lengths, int(cfg.trials), int(cfg.depths), int(cfg.seed))
    with timer("load"):
        model, tokenizer, _ = common.load(cfg)
    with timer("eval"):
        records = run_trials(model, tokenizer, trials, max_new_tokens=cfg.max_new_tokens,
                             share_prefix=cfg.share_prefix)
    result = {**common.header("passkey", cfg, prep, model), "lengths": lengths,
              "template": {"task": TASK, "filler": FILLER, "key": KEY, "question": QUESTION, "joined_by": "\\n"},
              "success_rate": SUCCESS_RATE, "summary": summarize(records), "trials": records,
              "timings": timer.seconds}
    log.info("passkey %s: k_max %d; %s", result["label"], result["summary"]["k_max"],
             ", ".join(f"{r['length']}: {r['accuracy']:.0%}" for r in result["summary"]["per_length"]))
    from posinterp.evals import plots

    common.write_results(cfg.out, cfg.force, result, markdown(result), {
        HEATMAP: lambda path: plots.passkey_heatmap(result, path),
        ACCURACY: lambda path: plots.passkey_accuracy([result], path)})
    print(markdown(result))
    return result
