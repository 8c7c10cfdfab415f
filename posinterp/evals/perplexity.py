"""Sliding-window perplexity (Press et al. 2022), the paper's long-context measure.

    posinterp eval ppl runs/smollm2-16k --data "books/*.txt" --windows 2048,8192,16384 --stride 256 --out results/ppl
    posinterp eval ppl smollm2-135m --rope pi:2 --data gutenberg --windows 16384 --max-tokens 20000

Windows of W tokens start every S tokens (S = --stride, 256 as in the paper); window i ends at
min(start + W, n). Each window scores only the tokens no earlier window scored, so every token
(except the document's first, which has nothing to condition on) is scored exactly once, with up
to W − 1 tokens of context; the first window scores all of its tokens. A document shorter than W
is one window at its own length; the results count such documents. Perplexity is token-weighted:
exp(Σ NLL / Σ scored tokens), per document and over the corpus.

Speed: the body runs in bf16 and returns hidden states; the fp32 head and log-softmax run on the
scored rows only (S of the W positions of a sliding window).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from posinterp.cli import arg, as_config, at_least
from posinterp.data.corpus import describe, load_documents
from posinterp.data.files import SPLITS
from posinterp.errors import PosinterpError
from posinterp.evals import common
from posinterp.evals.progress import Progress, priced

log = logging.getLogger(__name__)

FIGURE = "perplexity.png"


@dataclass
class PerplexityConfig(common.EvalConfig):
    data: str = arg("gutenberg", help="documents: text files or a glob, .jsonl/.parquet, a datasets folder, "
                                      "or a built-in corpus (gutenberg, pydoc); comma-separated to combine")
    split: str = arg("test", help="split of a built-in corpus or datasets folder", choices=SPLITS)
    text_field: str = arg("text", help="field holding the text in jsonl/parquet/datasets sources")
    max_docs: int | None = arg(None, help="evaluate only the first N documents")
    max_tokens: int | None = arg(None, help="truncate each document to its first N tokens "
                                            "(as the paper truncates proof-pile documents to 32768)")
    windows: str = arg("", help="evaluation windows in tokens: a,b,c or start:stop:count (default: the model's window)")
    stride: str = arg("256", help="tokens between window starts (each window scores its last `stride` new tokens): "
                                  "one value for every window, or one per window in ascending window order, "
                                  "e.g. --windows 2048,8192,16384 --stride 1024,2048,4096")
    batch_size: int = arg(1, help="full-length windows per forward pass")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.stride = ",".join(map(str, _parse_strides(self.stride)))  # "1024,4096" from a YAML list or text
        if self.windows:
            sizes = common.parse_lengths(self.windows, "--windows")
            if min(sizes) < 2:
                raise PosinterpError(f"--windows {self.windows}: a window needs at least 2 tokens")
            strides_for(sizes, self.stride)
        at_least("--max-docs", self.max_docs, 1)
        at_least("--max-tokens", self.max_tokens, 2, " (one token to score)")
        at_least("--batch-size", self.batch_size, 1)


def _parse_strides(text: str | int | list) -> list[int]:
    if isinstance(text, list | tuple):
        text = ",".join(map(str, text))
    try:
        values = [int(p) for p in str(text).strip("[] ").replace(" ", ",").split(",") if p.strip()]
    except ValueError:
        raise PosinterpError(f"--stride {text!r} is not a token count or a list of them; e.g. --stride 256") from None
    if not values or min(values) < 1:
        raise PosinterpError(f"--stride {text!r} must be at least 1 (the paper uses 256)")
    return values


def strides_for(sizes: list[int], text: str | int | list) -> dict[int, int]:
    """{window: stride}: one stride for all windows, or one per window in ascending window order."""
    values = _parse_strides(text)
    sizes = sorted(sizes)
    if len(values) == 1:
        values = values * len(sizes)
    elif len(values) != len(sizes):
        raise PosinterpError(f"--stride {text!r} gives {len(values)} strides for {len(sizes)} windows "
                             f"({','.join(map(str, sizes))}); give one stride, or one per window")
    for size, stride in zip(sizes, values):
        check_stride(stride, size)
    return dict(zip(sizes, values))


def check_stride(stride: int, window: int) -> None:
    """A window's first token has no context in it, so windows must overlap: stride < window."""
    if stride >= window:
        raise PosinterpError(f"--stride {stride} must be smaller than the window {window} (windows overlap so every "
                             f"token is scored with context); e.g. --stride {min(256, window // 2)}")


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over n tokens.

    Window i covers [i·stride, min(i·stride + window, n)) and scores positions [first, end): those
    after the previous window's end (position 0 has no context, so the first window starts at 1).
    """
    out, prev_end = [], 0
    if n < 2:
        return out
    for begin in range(0, n, stride):
        end = min(begin + window, n)
        out.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n:
            break
    return out


def progress_for(model: Any, docs: list[list[int]], strides: dict[int, int], what: str) -> Progress:
    """A Progress over every window of every size (each weighted by its priced forward and head, or by its
    tokens with no stage probe cached here)."""
    spans = [(e - b, e - f) for size, stride in strides.items() for ids in docs for b, e, f in windows(len(ids), size, stride)]
    return priced(what, model, spans, lambda sp, span: sp.forward_s(span[0]) + span[1] * sp.head_s_per_token,
                  lambda span: span[0])


def score(model: Any, docs: list[list[int]], window: int, stride: int, batch_size: int = 1,
          progress: bool | Progress = True) -> list[tuple[float, int]]:
    """(Σ NLL, scored tokens) per document: body in the model's dtype, fp32 head on scored rows only.
    `progress`: a shared Progress (one line per window with the ETA), True for one of its own, False: quiet."""
    import torch

    body, head = common.decoder(model), common.Head(model)
    tasks = [(d, b, e, f) for d, ids in enumerate(docs) for b, e, f in windows(len(ids), window, stride)]
    if progress is True:
        progress = progress_for(model, docs, {window: stride}, f"ppl window {window}")
    # windows of equal length can share a forward pass
    groups: dict[int, list[tuple[int, int, int, int]]] = {}
    for t in tasks:
        groups.setdefault(t[2] - t[1], []).append(t)
    totals = [[0.0, 0] for _ in docs]
    done = 0
    with common.eval_mode(model):
        for _, group in sorted(groups.items(), reverse=True):
            for i in range(0, len(group), batch_size):
                batch = group[i:i + batch_size]
                ids = torch.tensor([docs[d][b:e] for d, b, e, _ in batch], dtype=torch.long, device=model.device)  # (B, T)
                hidden = body(input_ids=ids, use_cache=False).last_hidden_state  # (B, T, D)
                for row, (d, b, e, f) in enumerate(batch):
                    # hidden at position p - 1 predicts token p, for p in [f, e)
                    h = hidden[row, f - 1 - b: e - 1 - b]
                    target = ids[row, f - b: e - b]
                    nll = -head.log_probs_of(h, target).double().sum().item()
                    totals[d][0] += nll
                    totals[d][1] += e - f
                done += len(batch)
                if progress:
                    for _ in batch:
                        progress.done(f"window {window}, {done}/{len(tasks)}")
    return [(nll, n) for nll, n in totals]


def reference(model: Any, docs: list[list[int]], window: int, stride: int) -> list[tuple[float, int]]:
    """The straightforward computation (full logits of every window, one window at a time).

    Used by the tests and bench/bench_eval.py to check `score`; same windows, no shortcuts.
    """
    import torch

    totals = []
    with common.eval_mode(model):
        for ids in docs:
            nll_sum, count = 0.0, 0
            for b, e, f in windows(len(ids), window, stride):
                x = torch.tensor([ids[b:e]], dtype=torch.long, device=model.device)
                logits = model(input_ids=x, use_cache=False).logits[0].float()  # (T, V)
                logp = torch.log_softmax(logits[:-1], dim=-1)
                nll = -logp.gather(-1, x[0, 1:, None])[:, 0]  # nll[j] is token b + j + 1
                nll_sum += nll[f - b - 1:].double().sum().item()
                count += e - f
            totals.append((nll_sum, count))
    return totals


def _ppl(nll: float, n: int) -> float | None:
    return math.exp(nll / n) if n else None


def markdown(result: dict) -> str:
    lines = [f"# Sliding-window perplexity: {result['label']}\n",
             f"- model: `{result['model']}`, rope: `{result['rope']}` ({result['rope_parameters']}), "
             f"window {result['window']}, allow_beyond_window: {result['allow_beyond_window']}",
             f"- corpus: {result['corpus']}; {len(result['documents'])} documents, "
             f"{sum(d['tokens'] for d in result['documents'])} tokens"
             + (f" (each truncated to {result['config']['max_tokens']})" if result['config']['max_tokens'] else ""),
             f"- stride {result['config']['stride']}, dtype {result['config']['dtype']} (fp32 head and log-softmax)",
             f"- time: {result['timings']}\n"]
    lines.append(common.md_table(
        ["window", "stride", "perplexity", "scored tokens", "forward windows", "documents shorter than window"],
        [[w["window"], w["stride"], w["perplexity"], w["tokens_scored"], w["forward_windows"], w["short_documents"]]
         for w in result["windows"]]))
    for note in result["notes"]:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def perplexity(cfg: PerplexityConfig | str | None = None, **kwargs) -> dict:
    """Run sliding-window perplexity; returns (and writes to --out) the results dict.

    `perplexity("smollm2-135m", data="gutenberg", windows="2048,8192")` or `perplexity(PerplexityConfig(...))`.
    """
    cfg = as_config(PerplexityConfig, cfg, kwargs)
    common.check_output(cfg)
    from posinterp.model import refs

    sizes = common.parse_lengths(cfg.windows, "--windows") if cfg.windows else None
    prep = common.prepare(cfg, max(sizes) if sizes else 0, "window", "--windows")
    sizes = sizes or [prep.window]
    stride_of = strides_for(sizes, cfg.stride)
    timer = common.Timer()
    with timer("tokenize"):
        documents = load_documents(cfg.data, split=cfg.split, text_field=cfg.text_field, limit=cfg.max_docs)
        tokenizer = refs.load_tokenizer(refs.dense(prep.ref))
        docs, meta = [], []
        for doc in documents:
            ids = list(tokenizer(doc.text)["input_ids"])
            kept = ids[: cfg.max_tokens] if cfg.max_tokens else ids
            docs.append(kept)
            meta.append({"name": doc.name, "tokens": len(kept), "tokens_before_truncation": len(ids)})
    if not any(len(d) >= 2 for d in docs):
        raise PosinterpError(f"--data {cfg.data!r}: no document has 2 or more tokens to score")
    with timer("load"):
        model, _, _ = common.load(cfg)
    rows, notes = [], []
    bar = progress_for(model, docs, stride_of, f"ppl {common.label(cfg.model, cfg.rope)}")
    for size in sizes:
        with timer(f"window_{size}"):
            totals = score(model, docs, size, stride_of[size], int(cfg.batch_size), progress=bar)
        nll, n = sum(t[0] for t in totals), sum(t[1] for t in totals)
        short = [m["name"] for m in meta if m["tokens"] < size]
        if short:
            notes.append(f"window {size}: {len(short)} of {len(docs)} documents are shorter than the window "
                         "and were scored at their own length")
        rows.append({
            "window": size, "stride": stride_of[size], "perplexity": _ppl(nll, n), "nll_sum": nll,
            "tokens_scored": n, "forward_windows": sum(len(windows(len(d), size, stride_of[size])) for d in docs),
            "short_documents": len(short), "short_document_names": short, "seconds": timer.seconds[f"window_{size}"],
            "documents": [{"name": m["name"], "tokens": m["tokens"], "scored": c, "nll_sum": s,
                           "perplexity": _ppl(s, c), "shorter_than_window": m["tokens"] < size}
                          for m, (s, c) in zip(meta, totals)]})
        log.info("ppl %s window %d: %.4f over %d tokens", common.label(cfg.model, cfg.rope), size,
                 rows[-1]["perplexity"] or float("nan"), n)
    result = {**common.header("perplexity", cfg, prep, model),
              "corpus": describe(cfg.data, cfg.split), "documents": meta, "windows": rows,
              "scoring": "sliding window (Press et al. 2022): every token after the first scored once, "
                         "up to W-1 tokens of context; token-weighted; tokenizer special tokens added as by default",
              "notes": notes, "timings": timer.seconds}
    from posinterp.evals import plots

    common.write_results(cfg.out, cfg.force, result, markdown(result),
                         {FIGURE: lambda path: plots.perplexity_by_window([result], path)})
    print(markdown(result))
    return result
