"""Evaluation during training (`train --eval-every N`): passkey and held-out perplexity along the curve.

    posinterp train smollm2-135m --rope pi:2 --seq-len 2048 --steps 100 --eval-every 25 \
        --eval-lengths 2048,8192 --eval-trials 4 --out runs/pi-ft

At step 0 and every N steps the model being trained is scored on a fixed probe, built once: passkey
prompts at `--eval-lengths` (keys spread over depths, the same keys every time) and the first
`--eval-ppl-tokens` tokens of a held-out text (`--eval-ppl-data`, its test split), in windows of the
training length. The result is one `{"kind": "eval", ...}` row in metrics.jsonl. Training does not
notice: no gradients, dropout off, and every random generator is restored afterwards, so a run with
`--eval-every` ends with the same weights, bit for bit, as one without.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Probe:
    trials: list
    docs: list[list[int]]
    window: int
    tokenizer: Any
    ppl_data: str | None

    @classmethod
    def build(cls, cfg: Any, tokenizer: Any, seq_len: int) -> Probe:
        """From a TrainConfig's --eval-* fields; the data are tokenized by the training tokenizer."""
        from posinterp.evals.common import parse_lengths
        from posinterp.evals.passkey import PromptBuilder, build_trials

        lengths = parse_lengths(cfg.eval_lengths, "--eval-lengths") if cfg.eval_lengths else [seq_len]
        trials = build_trials(PromptBuilder(tokenizer), lengths, int(cfg.eval_trials), 0, int(cfg.seed))
        docs: list[list[int]] = []
        if cfg.eval_ppl_data:
            from posinterp.corpus import iter_documents

            budget = int(cfg.eval_ppl_tokens)
            for doc in iter_documents(cfg.eval_ppl_data, split="test"):
                ids = list(tokenizer(doc.text)["input_ids"])[:budget]
                if len(ids) >= 2:
                    docs.append(ids)
                    budget -= len(ids)
                if budget < 2:
                    break
        return cls(trials, docs, int(seq_len), tokenizer, cfg.eval_ppl_data or None)

    def run(self, model: Any, step: int, tokens: int, precision: str, device: Any) -> dict:
        """Score `model` (the HF model under training) and return the metrics row."""
        import contextlib

        import torch

        from posinterp import checkpoint
        from posinterp.evals.passkey import run_trials
        from posinterp.evals.perplexity import score

        rng = checkpoint.rng_state()
        t0 = time.perf_counter()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        try:
            with autocast:
                records = run_trials(model, self.tokenizer, self.trials, progress=False) if self.trials else []
                totals = score(model, self.docs, self.window, max(1, self.window // 2), progress=False) \
                    if self.docs else []
        finally:
            checkpoint.set_rng_state(rng)
        passkey: dict[str, float] = {}
        for length in sorted({r["length"] for r in records}):
            hits = [r["correct"] for r in records if r["length"] == length]
            passkey[str(length)] = sum(hits) / len(hits)
        nll, n = sum(t[0] for t in totals), sum(t[1] for t in totals)
        return {"kind": "eval", "step": step, "tokens": tokens, "passkey": passkey,
                "ppl": math.exp(nll / n) if n else None, "ppl_window": self.window, "ppl_tokens": n,
                "ppl_data": self.ppl_data,
                "answers": [{"length": r["length"], "depth": r["depth"], "key": r["key"], "answer": r["answer"]}
                            for r in records],
                "eval_s": round(time.perf_counter() - t0, 2)}
