"""The report's summarization section: each row's ROUGE-1/2/L, on every document and on the documents the original
window cuts, read from the rows' `eval/<row>/summarize/results.json` alone.

- every document: the mean ± standard error over documents that eval summarize wrote (`evals/summarize.py`);
- the long documents: those with more tokens than fit the original window L beside the paper's prompt and
  `max_new_tokens` (L − prompt − new tokens − EOS), so the original row saw only their beginning: the same scores
  recomputed over them from the per-document rows (`mean_and_sem`). L is the original row's window, else the
  smallest original length the rows' rope records name.

eval summarize gives a standard error, not a bootstrap interval, so the report gives none either.
"""

from __future__ import annotations

import json
from pathlib import Path

from posinterp.evals.common import RESULTS_JSON, md_table
from posinterp.evals.summarize import ROUGE_TYPES, mean_and_sem
from posinterp.run.recipe import ROW_TITLES

NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def collect(run_dir: Path, rows: list[str]) -> dict[str, dict]:
    """row → its summarize results, for the rows that have them."""
    paths = {row: Path(run_dir) / "eval" / row / "summarize" / RESULTS_JSON for row in rows}
    return {row: json.loads(p.read_text()) for row, p in paths.items() if p.is_file()}


def original_window(results: dict[str, dict]) -> int:
    """L: the original row's window, else the smallest original length of the rows' rope records."""
    if "original" in results:
        return int(results["original"]["window"])
    return min(int((r.get("rope") or {}).get("original_length") or r["window"]) for r in results.values())


def scores(documents: list[dict]) -> dict[str, float | None]:
    """Mean and standard error of each ROUGE over `documents` (per-document rows of eval summarize); None if none."""
    out: dict[str, float | None] = {"documents": len(documents)}
    for k in ROUGE_TYPES:
        out[k], out[k + "_sem"] = mean_and_sem([float(d[k]) for d in documents]) if documents else (None, None)
    return out


def _cell(p: dict, k: str) -> str:
    return "—" if p.get(k) is None else f"{p[k]:.1f} ± {p[k + '_sem']:.1f}"


def _table(per: dict[str, dict], results: dict[str, dict]) -> str:
    head = ["", "documents", "document cut to (tokens)"] + [NAMES[k] for k in ROUGE_TYPES] + ["mean summary tokens"]
    body = []
    for row, p in per.items():
        docs = [d for d in results[row]["documents"] if d["name"] in p["names"]]
        new = sum(d["new_tokens"] for d in docs) / len(docs) if docs else None
        body.append([ROW_TITLES[row], str(p["documents"]), str(results[row]["max_input_tokens"])]
                    + [_cell(p, k) for k in ROUGE_TYPES] + ["—" if new is None else f"{new:.0f}"])
    return md_table(head, body).rstrip("\n")


def section(run_dir: Path, rows: list[str]) -> tuple[list[str], dict[str, dict]]:
    """The report's `## Summarization` lines (none when no row has summarize results) and the numbers per row:
    {rouge1, rouge1_sem, ..., documents, long: the same over the long documents}."""
    results = collect(run_dir, rows)
    if not results:
        return [], {}
    first = next(iter(results.values()))
    L = original_window(results)
    room = L - int(first["prompt_overhead_tokens"]) - int(first["max_new_tokens"]) - 1
    everything, long = {}, {}
    for row, res in results.items():
        docs = res["documents"]
        everything[row] = {**{k: res["mean"][k] for k in (*ROUGE_TYPES, *(t + "_sem" for t in ROUGE_TYPES))},
                           "documents": len(docs), "names": {d["name"] for d in docs}}
        cut = [d for d in docs if int(d["document_tokens"]) > room]
        long[row] = {**scores(cut), "names": {d["name"] for d in cut}}
    lines = ["", "## Summarization", "", _table(everything, results), "", _protocol(first)]
    n_long = max(p["documents"] for p in long.values())
    lines += ["", f"### Documents the original window cuts ({n_long} of {len(first['documents'])})", ""]
    if n_long:
        lines += [_table(long, results), "",
                  f"Documents of more than {room} tokens: what fits the original window {L} beside the prompt "
                  f"({first['prompt_overhead_tokens']} tokens), {first['max_new_tokens']} new tokens and EOS, so the "
                  "original row summarizes only their beginning; ROUGE mean ± standard error over these documents."]
    else:
        lines += [f"None: every document fits the original window {L} whole (≤ {room} tokens beside the prompt and "
                  "the new tokens), so the longer windows see nothing more."]
    numbers = {row: {**{k: v for k, v in p.items() if k != "names"},
                     "long": {k: v for k, v in long[row].items() if k != "names"}} for row, p in everything.items()}
    return lines, numbers


def _protocol(first: dict) -> str:
    """The section's protocol sentence, from the first row's results (every row runs the same section)."""
    return (f"Summarization: {first['data']}, {len(first['documents'])} documents, the paper's prompt "
            f"(\"{first['prompt'].splitlines()[0]} …\"), {first['decoding']}, up to {first['max_new_tokens']} new "
            "tokens; each row's documents cut to what fits its own window beside them (the column 'document cut to'). "
            "ROUGE F-measure × 100 (rouge_score, Porter stemmer), mean ± standard error over documents (eval "
            "summarize gives no bootstrap interval). Per document: each row's eval/<row>/summarize/results.md.")
