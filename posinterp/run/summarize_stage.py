"""A recipe's summarization: the `summarize <row>` stages of an `eval.summarize` section, their price and their
trim, the price of a `train.task: summarize` fine-tune, and both checked before the run folder is written.

With `eval.summarize` (eval summarize's flags as keys) every row but plain extrapolation gets a stage `summarize
<row>` writing `eval/<row>/summarize` (`run/stages.py`). Each row fills its own window: a document is cut to what
fits beside the paper's prompt and `max_new_tokens` (the original row at L, an extended row at s·L, nopi_ft at the
length it trained at), so `max_input_tokens` is the pipeline's. Plain extrapolation gets none: eval summarize cuts
every document to the configured window, so that row would be the original row again.

Price (`estimate.summarize_seconds`): one prefill of each document's prompt plus `max_new_tokens` decoded against
it. A `--budget` trims the documents (`eval.summarize.limit`, to no fewer than `MIN_DOCUMENTS`) after RULER samples,
passkey trials and perplexity text, before the fine-tune steps: fewer documents widen the intervals, fewer steps
change what is compared.

A summarization fine-tune trains one unpadded example per sequence (prompt + document cut to fit + summary + EOS),
so it is priced from the data's own example lengths (the first `SAMPLE` pairs, tokenized once per process), not at
seq_len tokens per step: aclsum's papers average ≈ 6.6k tokens against a seq_len of 16384.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.evals.summarize import SummarizeConfig
from posinterp.run import estimate
from posinterp.run.recipe import Recipe, _recipe_flags
from posinterp.train.config import TrainConfig

MIN_DOCUMENTS = 10
"""The fewest documents per row a `--budget` trims `eval.summarize.limit` to."""
SAMPLE = 256
"""Pairs tokenized to price a summarization fine-tune (all of aclsum's 198 train papers)."""


def summarize_stages(stages: list) -> list:
    return [s for s in stages if s.name.startswith("summarize ")]


@functools.lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from posinterp.model import refs

    return refs.load_tokenizer(refs.dense(refs.resolve(model)))


@functools.lru_cache(maxsize=16)
def pair_tokens(model: str, data: str, split: str, document_field: str, summary_field: str,
                limit: int | None) -> tuple[tuple[int, int], ...]:
    """(document tokens, summary tokens as trained: the leading space + the summary) of the first `limit` pairs,
    with `model`'s tokenizer."""
    from posinterp.data import summaries

    pairs = summaries.load_pairs(data, split=split, document_field=document_field, summary_field=summary_field,
                                 limit=limit)
    tok = _tokenizer(model)
    docs = tok([p.document for p in pairs], add_special_tokens=False)["input_ids"]
    sums = tok([summaries.SUMMARY_LEAD + p.summary.strip() for p in pairs], add_special_tokens=False)["input_ids"]
    return tuple((len(d), len(s)) for d, s in zip(docs, sums, strict=True))


def _budget(cfg: SummarizeConfig, window: int, model: str, row: str = "") -> Any:
    from posinterp.data import sft

    return sft.fit_budget(_tokenizer(model), window, max_summary_tokens=cfg.max_new_tokens,
                          max_input_tokens=cfg.max_input_tokens, summary_flag="--max-new-tokens",
                          window_flag=f"row {row}'s window" if row else "the row's window")


def prompts(cfg: SummarizeConfig, window: int, model: str) -> tuple[list[int], int]:
    """Each document's prompt tokens at `window` (the document cut to fit), and how many documents are cut."""
    budget = _budget(cfg, window, model)
    docs = [d for d, _ in pair_tokens(model, cfg.data, cfg.split, cfg.document_field, cfg.summary_field, cfg.limit)]
    return [budget.overhead + min(d, budget.max_input_tokens) for d in docs], sum(d > budget.max_input_tokens for d in docs)


def stage_seconds(stage: Any, speed: Any, model: str) -> float:
    cfg = stage.config
    return estimate.summarize_seconds(speed, prompt_tokens=prompts(cfg, stage.window, model)[0],
                                      new_tokens=cfg.max_new_tokens)


def _train_budget(cfg: TrainConfig, seq_len: int, model: str) -> Any:
    from posinterp.data import sft

    return sft.fit_budget(_tokenizer(model), seq_len, max_summary_tokens=cfg.max_summary_tokens,
                          max_input_tokens=cfg.max_input_tokens, window_flag="--seq-len")


def example_tokens(cfg: TrainConfig, seq_len: int, model: str) -> list[int]:
    """The lengths of a summarization fine-tune's examples at `seq_len` (of the first `SAMPLE` pairs), as
    `data/sft.build_example` builds them: prompt + document cut to fit + summary cut + EOS."""
    budget = _train_budget(cfg, seq_len, model)
    eos = int(_tokenizer(model).eos_token_id is not None)
    return [budget.overhead + min(d, budget.max_input_tokens) + min(s, budget.max_summary_tokens) + eos
            for d, s in pair_tokens(model, cfg.data, cfg.split, cfg.document_field, cfg.summary_field, SAMPLE)]


def trim(recipe: Recipe, est: dict[str, float], budget: float, model: str,
         priced: Callable[[Recipe], tuple[list, dict[str, float]]]) -> tuple[Recipe, list | None, dict[str, float], str]:
    """Fewer documents per row (the first N of the same set, every row the same) until the plan fits `budget`, to no
    fewer than `MIN_DOCUMENTS`: the proportional guess, then corrections (documents differ in length). Returns the
    recipe, its stages and estimates (None and `est` when nothing was trimmed) and the trim in words ('' if none)."""
    import dataclasses

    su = recipe.eval.summarize
    if su is None or sum(est.values()) <= budget or not any(k.startswith("summarize ") for k in est):
        return recipe, None, est, ""
    start = current = su.limit or len(pair_tokens(model, su.data, su.split, su.document_field, su.summary_field, None))
    stages = None
    for _ in range(8):
        over = sum(est.values()) - budget
        docs_s = sum(v - estimate.LOAD_S for k, v in est.items() if k.startswith("summarize "))
        if over <= 0 or docs_s <= 0 or current <= MIN_DOCUMENTS:
            break
        current = max(MIN_DOCUMENTS, min(current - 1, math.floor(current * (1 - over / docs_s))))
        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, summarize=dataclasses.replace(
            recipe.eval.summarize, limit=current)))
        stages, est = priced(recipe)
    said = f"summarized documents {start} → {current} per row (the first {current} of {su.data}:{su.split})"
    return recipe, stages, est, said if current < start else ""


def work_line(stages: list, model: str) -> str:
    """`--dry-run`'s line: documents, decoding, and over the summarize stages the tokens to prefill and decode and
    how many documents each row's window cuts."""
    found = summarize_stages(stages)
    if not found:
        return "no row summarizes (plain extrapolation would be the original row again)"
    cfg = found[0].config
    try:
        per = {s.name.removeprefix("summarize "): (s.window, *prompts(s.config, s.window, model)) for s in found}
    except PosinterpError as err:
        return f"{cfg.data}:{cfg.split}: not available here ({err})"
    n = len(next(iter(per.values()))[1])
    decoding = "greedy" if cfg.greedy else f"sampled at temperature {cfg.temperature:g}, top-p {cfg.top_p:g}"
    cuts = "; ".join(f"{row} at {w}: {cut} of {n} cut" for row, (w, _, cut) in per.items())
    return (f"{n} document{'s' * (n != 1)} of {cfg.data}:{cfg.split} per row, each cut to the row's window, ≤ "
            f"{cfg.max_new_tokens} new tokens {decoding}: {sum(sum(p) for _, p, _ in per.values()):,} prompt tokens "
            f"to prefill and at most {n * cfg.max_new_tokens * len(per):,} to decode over {len(per)} row"
            f"{'s' * (len(per) != 1)} ({cuts})")


def train_data_line(recipe: Recipe, stages: list) -> tuple[str, dict[int, float]]:
    """`--dry-run`'s data line for `train.task: summarize`, and the mean example tokens at each fine-tune's seq_len."""
    from posinterp.data import summaries

    tr = recipe.train
    lengths = sorted({int(s.config.seq_len or s.window) for s in stages if s.name.startswith("train (")})
    try:
        n = len(pair_tokens(recipe.model, str(tr.data), tr.split, tr.document_field, tr.summary_field, SAMPLE))
        means = {L: sum(ex) / len(ex) for L in lengths if (ex := example_tokens(tr, L, recipe.model))}
    except PosinterpError as err:
        return f"{tr.data}: not available here ({err})", {}
    count = f"the first {n}" if n == SAMPLE else f"{n}"
    at = ", ".join(f"{means[L]:,.0f} tokens at seq_len {L}" for L in sorted(lengths, reverse=True)) or "(no fine-tune)"
    return (f"{summaries.describe_pairs(str(tr.data), tr.split)}: {count} pairs; an example (prompt + document cut to "
            f"fit + summary ≤ {tr.max_summary_tokens} + EOS) averages {at}"), means


def check(recipe: Recipe, stages: list) -> None:
    """The summarization pairs of the stages about to run are readable and each fits its window (eval.summarize at
    every row's window, a summarization fine-tune at its seq_len): refused in one line naming the recipe key."""
    from posinterp.data import summaries

    for s in summarize_stages(stages):
        cfg = s.config
        try:
            summaries.load_pairs(cfg.data, split=cfg.split, document_field=cfg.document_field,
                                 summary_field=cfg.summary_field, limit=1)
            _budget(cfg, s.window, recipe.model, s.name.removeprefix("summarize "))
        except PosinterpError as err:
            raise PosinterpError(_recipe_flags(str(err), SummarizeConfig, "eval.summarize.")) from None
    for s in stages:
        cfg = s.config
        if s.name.startswith("train (") and cfg.task == "summarize":
            try:
                summaries.load_pairs(cfg.data, split=cfg.split, document_field=cfg.document_field,
                                     summary_field=cfg.summary_field, limit=1)
                _train_budget(cfg, int(cfg.seq_len or s.window), recipe.model)
            except PosinterpError as err:
                raise PosinterpError(_recipe_flags(str(err), TrainConfig, "train.")) from None
