"""Evaluation during training (`train --eval-every N`): passkey and held-out perplexity along the curve.

    posinterp train smollm2-135m --rope pi:2 --seq-len 2048 --steps 100 --eval-every 25 \
        --eval-lengths 2048,8192 --eval-trials 4 --out runs/pi-ft

At step 0 and every N steps the model being trained is scored on a fixed probe, built once: passkey
prompts at `--eval-lengths` (keys spread over depths, the same keys every time) and the first
`--eval-ppl-tokens` tokens of a held-out text (`--eval-ppl-data`, its test split), in windows of the
training length, and the heads figures of `theory heads` (`posinterp.theory.head_measure.measure` and `figures`,
the same code; probes of `--eval-heads-length` tokens): the previous-token heads' attention mass at
offsets 1 and 2, the copy heads' mass at +1 and +2 on repeated random tokens (induction) and on passkey
keys, and the loss on the repeated tokens. The heads followed are those of `--eval-heads-reference`, or
this run's own at its first evaluation (kept in `<checkpoint-dir>/heads_sets.json`, so a resumed run
follows the same heads). The result is one `{"kind": "eval", ...}` row in metrics.jsonl. Training does not
notice: no gradients, dropout off, and every random generator is restored afterwards, so a run with
`--eval-every` ends with the same weights, bit for bit, as one without.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEADS_LENGTH = 1024
"""Default heads probe length: min(--seq-len, this); the heads in question are local."""
HEADS_SETS = "heads_sets.json"


def heads_length(cfg: Any, seq_len: int) -> int:
    """The heads probe length of a TrainConfig: --eval-heads-length, else min(--seq-len, HEADS_LENGTH); 0 = none."""
    return int(cfg.eval_heads_length) if cfg.eval_heads_length is not None else min(int(seq_len), HEADS_LENGTH)


@dataclass
class HeadsProbe:
    """The heads figures along the curve: probes built once, the followed head sets fixed at the first use."""

    probes: Any
    sets: dict | None
    sets_path: Path

    @classmethod
    def build(cls, cfg: Any, tokenizer: Any, seq_len: int, model: Any) -> HeadsProbe | None:
        from posinterp.errors import PosinterpError
        from posinterp.theory import head_measure, heads

        explicit = cfg.eval_heads_length is not None
        length = heads_length(cfg, seq_len)
        if length == 0:
            return None
        config = model.config
        try:
            if length < 2 * (heads.MAX_OFFSET + 2):
                raise PosinterpError(f"--eval-heads-length {length} must be at least {2 * (heads.MAX_OFFSET + 2)}")
            probes = head_measure.Probes.build(tokenizer, int(config.vocab_size), length, heads.TRIALS, int(cfg.seed),
                                     cfg.eval_ppl_data or "gutenberg", "test")
        except PosinterpError as err:
            if explicit:
                raise
            log.info("--eval-every: no heads figures at %d tokens (%s); --eval-heads-length 0 silences this", length, err)
            return None
        sets_path = Path(cfg.checkpoint_dir) / HEADS_SETS
        sets = None
        if cfg.eval_heads_reference is not None:
            ref = heads.load_reference(Path(cfg.eval_heads_reference), int(config.num_hidden_layers),
                                    int(config.num_attention_heads), heads.MAX_OFFSET)
            sets = ref["head_sets"]
        elif sets_path.is_file():  # a resumed run follows the heads it chose at its first evaluation
            sets = json.loads(sets_path.read_text())["head_sets"]
        return cls(probes, sets, sets_path)

    def run(self, model: Any) -> dict:
        from posinterp.atomic import write_json
        from posinterp.theory import head_measure, heads

        measured = head_measure.measure(model, self.probes, heads.MAX_OFFSET)
        if self.sets is None:
            self.sets = head_measure.head_sets(measured.arrays, heads.MAX_OFFSET, heads.TOP)
            write_json(self.sets_path, {"head_sets": self.sets, "length": self.probes.length})
        return {"length": self.probes.length, **head_measure.figures(measured, self.sets, heads.MAX_OFFSET)}


@dataclass
class Probe:
    trials: list
    docs: list[list[int]]
    window: int
    tokenizer: Any
    ppl_data: str | None
    heads: HeadsProbe | None = None

    @classmethod
    def build(cls, cfg: Any, tokenizer: Any, seq_len: int, model: Any = None) -> Probe:
        """From a TrainConfig's --eval-* fields; the data are tokenized by the training tokenizer. `model`
        (the HF model to be trained) gives the heads probes their vocabulary and layer shape."""
        from posinterp.evals.common import parse_lengths
        from posinterp.evals.passkey import PromptBuilder, build_trials

        lengths = parse_lengths(cfg.eval_lengths, "--eval-lengths") if cfg.eval_lengths else [seq_len]
        trials = build_trials(PromptBuilder(tokenizer), lengths, int(cfg.eval_trials), 0, int(cfg.seed))
        docs: list[list[int]] = []
        if cfg.eval_ppl_data:
            from posinterp.data.corpus import iter_documents

            budget = int(cfg.eval_ppl_tokens)
            for doc in iter_documents(cfg.eval_ppl_data, split="test"):
                ids = list(tokenizer(doc.text)["input_ids"])[:budget]
                if len(ids) >= 2:
                    docs.append(ids)
                    budget -= len(ids)
                if budget < 2:
                    break
        heads = HeadsProbe.build(cfg, tokenizer, seq_len, model) if model is not None else None
        return cls(trials, docs, int(seq_len), tokenizer, cfg.eval_ppl_data or None, heads)

    def run(self, model: Any, step: int, tokens: int, precision: str, device: Any) -> dict:
        """Score `model` (the HF model under training) and return the metrics row."""
        import contextlib

        import torch

        from posinterp.evals.passkey import run_trials
        from posinterp.evals.perplexity import score
        from posinterp.train import checkpoint

        rng = checkpoint.rng_state()
        t0 = time.perf_counter()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        try:
            with autocast:
                records = run_trials(model, self.tokenizer, self.trials, progress=False) if self.trials else []
                totals = score(model, self.docs, self.window, max(1, self.window // 2), progress=False) \
                    if self.docs else []
                heads = self.heads.run(model) if self.heads is not None else None
        finally:
            checkpoint.set_rng_state(rng)
        passkey: dict[str, float] = {}
        for length in sorted({r["length"] for r in records}):
            hits = [r["correct"] for r in records if r["length"] == length]
            passkey[str(length)] = sum(hits) / len(hits)
        nll, n = sum(t[0] for t in totals), sum(t[1] for t in totals)
        return {"kind": "eval", "step": step, "tokens": tokens, "passkey": passkey,
                "ppl": math.exp(nll / n) if n else None, "ppl_window": self.window, "ppl_tokens": n,
                "ppl_data": self.ppl_data, "heads": heads,
                "answers": [{"length": r["length"], "depth": r["depth"], "key": r["key"], "answer": r["answer"]}
                            for r in records],
                "eval_s": round(time.perf_counter() - t0, 2)}
