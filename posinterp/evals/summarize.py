"""`eval summarize`: long-document summarization with the paper's prompt and decoding, ROUGE-1/2/L.

    posinterp eval summarize runs/smollm2-16k-sum --data govreport/ --max-input-tokens 15000
    posinterp eval summarize smollm2-135m --data aclsum --limit 30 --max-new-tokens 256 --out /tmp/sum-aclsum
    posinterp eval summarize smollm2-135m --data pydoc-summaries --limit 2 --max-input-tokens 1024 \\
        --max-new-tokens 64 --out /tmp/sum-smoke

Protocol (the paper's GovReport evaluation): the document cut to `--max-input-tokens` tokens inside
"Read the following article and then summarize it. … Now summarize the above article.
Summary:", sampled at temperature 0.5 and top-p 0.95 (seeded per document; `--greedy` for greedy
decoding), scored with Google's `rouge_score` (ROUGE-1/2/L F-measure, Porter stemmer). Scores
are reported as percentages, per document and as the mean ± its standard error over documents.

With `--out`, writes there atomically: results.json (config, data, per-document and mean scores,
versions), results.md (the table), generations.jsonl (prompt length, reference, generation);
without, prints the table only.
The model runs in bf16 with its KV cache, never with activation checkpointing (which would turn
the cache off and recompute the whole prompt for every new token).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg, as_config, at_least, to_dict
from posinterp.errors import PosinterpError
from posinterp.evals.common import DTYPE_HELP, DTYPES, dtype_name, resolve_dtype
from posinterp.model.loader import ModelArgs

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass
class SummarizeConfig(ModelArgs):
    """The model flags come from `posinterp.model.loader.ModelArgs`; --seed: document i samples with seed + i."""

    data: str = arg("pydoc-summaries", help="(document, summary) pairs: .jsonl/.json/.parquet files, a folder or "
                                            "glob of them, a datasets folder, the built-in aclsum (250 ACL papers, "
                                            "full text → abstract; fetched by make setup), or the built-in smoke "
                                            "set pydoc-summaries")
    split: str = arg("test", help="split: train, validation, test or all", choices=("train", "validation", "test", "all"))
    document_field: str = arg("report", help="field holding the document (GovReport: report)")
    summary_field: str = arg("summary", help="field holding the reference summary (GovReport: summary)")
    limit: int | None = arg(None, help="evaluate only the first N documents")
    max_input_tokens: int | None = arg(None, help="document tokens kept (paper: 15000 at 16k); default: "
                                                  "what fits the window beside the prompt and --max-new-tokens")
    max_new_tokens: int = arg(256, help="largest summary length generated, in tokens (GovReport summaries run to ~800)")
    greedy: bool = arg(False, help="greedy decoding instead of the paper's sampling")
    temperature: float = arg(0.5, help="sampling temperature (paper: 0.5)")
    top_p: float = arg(0.95, help="nucleus sampling mass (paper: 0.95)")
    dtype: str = arg("auto", help=DTYPE_HELP, choices=DTYPES)
    out: Path | None = arg(None, help="folder for results.json, results.md, generations.jsonl (none: print only)")
    force: bool = arg(False, help="replace a non-empty --out")

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least("--limit", self.limit, 1, " document")
        at_least("--max-new-tokens", self.max_new_tokens, 1, " token")
        if not self.greedy:
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise PosinterpError(f"--temperature {self.temperature} must be > 0 (or pass --greedy)")
            if not 0 < self.top_p <= 1:
                raise PosinterpError(f"--top-p {self.top_p} must be in (0, 1]")
        if self.out is not None:
            self.out = Path(self.out)
        self.dtype = dtype_name(self.dtype)


def scorer() -> Any:
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # its "Using default tokenizer." info line
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(reference: str, generation: str, rouge_scorer: Any = None) -> dict[str, float]:
    """ROUGE-1/2/L F-measures in [0, 1] of `generation` against `reference` (rouge_score, stemmed)."""
    scores = (rouge_scorer or scorer()).score(reference, generation)  # (target, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def mean_and_sem(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std / √n; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def markdown(result: dict) -> str:
    """The per-document table and the mean row (percent F-measures)."""
    lines = [f"# Summarization: {result['model']}", "",
             f"data: {result['data']}; {result['decoding']}; document cut to {result['max_input_tokens']} tokens, "
             f"up to {result['max_new_tokens']} new tokens", "",
             "| document | prompt tokens | generated tokens | ROUGE-1 | ROUGE-2 | ROUGE-L |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for doc in result["documents"]:
        lines.append(f"| {doc['name']} | {doc['prompt_tokens']} | {doc['new_tokens']} | "
                     + " | ".join(f"{doc[k]:.1f}" for k in ROUGE_TYPES) + " |")
    mean = result["mean"]
    lines.append(f"| **mean ± s.e. ({len(result['documents'])} docs)** | | | "
                 + " | ".join(f"**{mean[k]:.1f} ± {mean[k + '_sem']:.1f}**" for k in ROUGE_TYPES) + " |")
    lines += ["", "ROUGE F-measure × 100 (rouge_score, Porter stemmer); with --out the generations are in generations.jsonl."]
    if "SMOKE SET" in result["data"]:
        lines.append("The built-in pydoc-summaries set is a smoke test of the pipeline, not a benchmark.")
    return "\n".join(lines) + "\n"


def generation_settings(cfg: SummarizeConfig, tokenizer: Any) -> tuple[dict[str, Any], str]:
    """(`generate` keyword arguments, the decoding in words): greedy, or the paper's top-p sampling."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    gen_kwargs: dict[str, Any] = {"max_new_tokens": int(cfg.max_new_tokens), "use_cache": True,
                                  "eos_token_id": eos, "pad_token_id": pad}
    if cfg.greedy:
        gen_kwargs.update(do_sample=False)
        return gen_kwargs, "greedy decoding"
    # top_k=0 turns off the library's default top-k 50: the paper samples with top-p only
    gen_kwargs.update(do_sample=True, temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=0)
    return gen_kwargs, f"sampling, temperature {cfg.temperature:g}, top-p {cfg.top_p:g}, seed {cfg.seed} + document index"


def summarize_documents(model: Any, tokenizer: Any, pairs: list, budget: Any, gen_kwargs: dict[str, Any],
                        seed: int) -> tuple[list[dict], list[dict]]:
    """(per-document rows with ROUGE, generations): one `generate` per document, seeded by seed + index."""
    import torch

    from posinterp.data import sft
    from posinterp.evals.common import eval_mode
    from posinterp.evals.progress import priced

    rs = scorer()
    eos = gen_kwargs["eos_token_id"]
    docs, generations = [], []
    prompts = [sft.prompt_only(tokenizer, pair.document, budget.max_input_tokens) for pair in pairs]
    new_tokens = int(gen_kwargs["max_new_tokens"])  # one line per document with the ETA, priced at the full count
    bar = priced("summarize", model, [len(ids) for ids in prompts],
                 lambda sp, n: sp.forward_s(n) + new_tokens * sp.decode_token_s(n), lambda n: n + new_tokens,
                 note=f", at the full {new_tokens} new tokens")
    for i, (pair, ids) in enumerate(zip(pairs, prompts, strict=True)):
        doc_tokens = len(tokenizer(pair.document, add_special_tokens=False)["input_ids"])
        input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)  # (1, T)
        torch.manual_seed(seed + i)
        t0 = time.time()
        with eval_mode(model):  # inference mode, no activation checkpointing: the KV cache is used
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **gen_kwargs)
        seconds = time.time() - t0
        new = out[0, input_ids.shape[1]:].tolist()
        if eos is not None and eos in new:
            new = new[:new.index(eos)]
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        scores = {k: 100.0 * v for k, v in rouge(pair.summary, text, rs).items()}
        row = {"name": pair.name, "document_tokens": doc_tokens, "truncated": doc_tokens > budget.max_input_tokens,
               "prompt_tokens": len(ids), "new_tokens": len(new), "seconds": round(seconds, 2), **scores}
        docs.append(row)
        generations.append({**{k: row[k] for k in ("name", "prompt_tokens", "truncated", "new_tokens")},
                            "reference": pair.summary, "generation": text, **scores})
        bar.done(f"{pair.name}: {len(ids)} prompt tokens → {len(new)} new in {seconds:.1f} s; ROUGE-1/2/L "
                 + " / ".join(f"{scores[k]:.1f}" for k in ROUGE_TYPES))
    return docs, generations


def summarize(cfg: SummarizeConfig | str | None = None, **kwargs) -> dict:
    """Generate a summary of every document, score it with ROUGE, write results; returns them.

    `summarize(SummarizeConfig(...))` or `summarize("runs/x", data="govreport/", limit=10)`.
    """
    cfg = as_config(SummarizeConfig, cfg, kwargs)
    from posinterp.atomic import atomic_dir, check_out, write_json, write_text
    from posinterp.data import sft, summaries
    from posinterp.model import loader, refs
    from posinterp.versions import package_version, versions

    # everything that can be refused is refused before the model is loaded
    if cfg.out is not None:
        check_out(cfg.out, cfg.force)
    pairs = summaries.load_pairs(cfg.data, split=cfg.split, document_field=cfg.document_field,
                                 summary_field=cfg.summary_field, limit=cfg.limit)  # e.g. an unfetched aclsum
    cfg.device = loader.pick_device(cfg.device)
    cfg.precision = resolve_dtype(cfg)
    prep = loader.prepare(cfg.model, cfg.rope_spec, cfg.original_length)
    ref, win, rope_info = prep.ref, prep.window, prep.rope_info
    tokenizer = refs.load_tokenizer(refs.dense(ref))
    budget = sft.fit_budget(tokenizer, win, max_summary_tokens=cfg.max_new_tokens,
                            max_input_tokens=cfg.max_input_tokens, summary_flag="--max-new-tokens")
    data_name = summaries.describe_pairs(cfg.data, cfg.split)

    import torch

    model, _ = prep.load(getattr(torch, cfg.dtype), device=cfg.device)
    model.config.use_cache = True
    gen_kwargs, decoding = generation_settings(cfg, tokenizer)
    log.info("summarize %s: %d documents of %s, window %d, document ≤ %d tokens, ≤ %d new tokens, %s",
             cfg.model, len(pairs), data_name, win, budget.max_input_tokens, cfg.max_new_tokens, decoding)

    t_all = time.time()
    docs, generations = summarize_documents(model, tokenizer, pairs, budget, gen_kwargs, int(cfg.seed))

    mean = {}
    for k in ROUGE_TYPES:
        m, se = mean_and_sem([d[k] for d in docs])
        mean[k], mean[k + "_sem"] = round(m, 3), round(se, 3)
    result = {
        "verb": "eval summarize", "model": str(cfg.model), "model_files": str(refs.dense(ref).folder),
        "rope": rope_info, "window": win, "data": data_name, "split": cfg.split, "decoding": decoding,
        "prompt": summaries.PROMPT, "max_input_tokens": budget.max_input_tokens, "max_new_tokens": int(cfg.max_new_tokens),
        "prompt_overhead_tokens": budget.overhead, "mean": mean,
        "scores": "ROUGE F-measure x 100 (rouge_score RougeScorer, use_stemmer=True); mean ± standard error over documents",
        "documents": docs, "seconds": round(time.time() - t_all, 1), "precision": cfg.precision,
        "config": to_dict(cfg), "versions": {**versions(), "rouge_score": package_version("rouge-score")},
    }
    table = markdown(result)
    if cfg.out is not None:
        with atomic_dir(cfg.out, force=cfg.force) as tmp:
            write_json(tmp / "results.json", result)
            write_text(tmp / "results.md", table)
            write_text(tmp / "generations.jsonl",
                       "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in generations))
    print(table, end="")
    if cfg.out is not None:
        log.info("wrote %s", cfg.out)
    return result
