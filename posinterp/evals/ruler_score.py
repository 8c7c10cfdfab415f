"""RULER's numbers from per-sample scores: the task × length table with Wilson intervals, the average per length,
and the effective length under an absolute and a relative threshold.

- Score of a sample: RULER's string_match_all, the percent of its reference strings found in the output.
  A cell's score is the mean over its samples (RULER's number).
- Pass: a sample passes when its score is 100 (every reference found). A cell's pass rate and its Wilson 95 %
  interval come from its pass count; for single-answer tasks pass rate and score are the same thing.
- Average at a length: the mean of the cell scores over the tasks run (RULER averages its 13 tasks; here
  the 11 synthetic ones that need no QA data, so the absolute threshold is RULER's but not its task set).
- Effective length under a threshold t: the largest evaluated length L whose average is ≥ t, and so is
  every shorter evaluated length's; 0 when the shortest is below t.
  - absolute: t = 85.6, RULER's (Llama-2-7B's average at 4K);
  - relative: t = 0.856 × B, where B is the original model's own level: the mean, over the lengths of
    `--reference` (the original model's RULER results.json) that lie within that model's window, of its
    average over this run's tasks. It asks how far the extended model keeps 85.6 % of what the original
    did inside its trained window.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from posinterp.errors import PosinterpError

ABSOLUTE = 85.6
"""RULER's threshold: Llama-2-7B's average score at 4K."""
RELATIVE_SHARE = 0.856
"""The relative rule's share of the original model's own level (RULER's 85.6, as a share)."""
Z95 = 1.959963984540054


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = passed / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (round(100 * max(0.0, center - half), 2), round(100 * min(1.0, center + half), 2))


def cell(scores: list[float]) -> dict:
    passed = sum(s >= 100.0 - 1e-9 for s in scores)
    return {"samples": len(scores), "score": round(sum(scores) / len(scores), 2), "passed": passed,
            "pass_rate": round(100 * passed / len(scores), 2), "wilson95": list(wilson(passed, len(scores)))}


def effective_length(averages: dict[int, float], threshold: float) -> int:
    """Largest length L with averages ≥ threshold at L and every shorter length (0 when the shortest fails)."""
    best = 0
    for length in sorted(averages):
        if averages[length] + 1e-9 < threshold:
            break
        best = length
    return best


def summarize(records: list[dict], tasks: list[str], lengths: list[int], reference: dict | None = None) -> dict:
    """The table, the averages and both effective lengths from the per-sample records."""
    scores: dict[tuple[str, int], list[float]] = {}
    for r in records:
        scores.setdefault((r["task"], r["length"]), []).append(r["score"])
    table = {t: {str(n): cell(scores[(t, n)]) for n in lengths if (t, n) in scores} for t in tasks}
    averages = {n: sum(table[t][str(n)]["score"] for t in tasks) / len(tasks) for n in lengths}
    absolute = {"threshold": ABSOLUTE, "length": effective_length(averages, ABSOLUTE),
                "rule": f"largest length whose average over the tasks is ≥ {ABSOLUTE}, as is every shorter one "
                        "(RULER's threshold: Llama-2-7B at 4K)"}
    if reference is None:
        relative = {"threshold": None, "length": None, "rule": relative_rule(), "why": "no --reference given"}
    else:
        threshold = RELATIVE_SHARE * reference["base"]
        relative = {"threshold": round(threshold, 2), "length": effective_length(averages, threshold),
                    "rule": relative_rule(), **reference}
    return {"table": table, "average": {str(n): round(a, 2) for n, a in averages.items()},
            "overall": round(sum(averages.values()) / len(averages), 2),
            "effective_length": {"absolute": absolute, "relative": relative}}


def relative_rule() -> str:
    return (f"largest length whose average over the tasks is ≥ {RELATIVE_SHARE} × B, as is every shorter one; "
            "B = the original model's (--reference) mean average over its lengths within its own window, "
            "on the same tasks")


def read_reference(path: Path, tasks: list[str]) -> dict:
    """The relative rule's base from the original model's RULER results.json (or the folder holding it)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        ref = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise PosinterpError(f"--reference {path}: cannot read a results.json ({type(err).__name__}); give the "
                             "original model's `eval ruler` results.json or its folder") from None
    if not isinstance(ref, dict) or ref.get("kind") != "ruler":
        raise PosinterpError(f"--reference {file} is not an `eval ruler` result (kind {ref.get('kind')!r}); "
                             "give the original model's eval ruler results.json")
    window, table = int(ref.get("window") or 0), ref.get("summary", {}).get("table", {})
    missing = [t for t in tasks if t not in table]
    if missing:
        raise PosinterpError(f"--reference {file} has no results for {', '.join(missing)}; run the original model "
                             "on the same --tasks")
    inside = sorted(int(n) for n in set.intersection(*(set(table[t]) for t in tasks)) if int(n) <= window)
    if not inside:
        raise PosinterpError(f"--reference {file}: none of its lengths lies within its window {window} on every "
                             "task; run the original model at lengths up to its window")
    levels = [sum(table[t][str(n)]["score"] for t in tasks) / len(tasks) for n in inside]
    return {"reference": str(file), "reference_label": ref.get("label"), "reference_window": window,
            "reference_lengths": inside, "base": round(sum(levels) / len(levels), 2),
            "reference_prompt_format": ref.get("prompt", {}).get("kind"),
            "reference_seed": ref.get("config", {}).get("seed")}


def markdown(result: dict) -> str:
    from posinterp.evals.common import md_table

    s = result["summary"]
    lengths = [int(n) for n in result["lengths"]]
    ab, rel = s["effective_length"]["absolute"], s["effective_length"]["relative"]
    rel_line = (f"- effective length, relative (≥ {rel['threshold']} = {RELATIVE_SHARE} × {rel['base']}, the "
                f"original's level in its window from `{rel['reference']}`): **{rel['length']}**"
                if rel["threshold"] is not None else "- effective length, relative: not computed (no --reference)")
    lines = [f"# RULER: {result['label']}\n",
             f"- model: `{result['model']}`, rope: `{result['rope']}`, window {result['window']}, "
             f"prompt format: {result['prompt']['kind']}, seed {result['config']['seed']}",
             "- score: RULER's string_match_all (percent of the answers found), mean over the samples; "
             "in brackets the samples passed (score 100) of those run; their Wilson 95% intervals are in results.json",
             f"- effective length, absolute (average ≥ {ab['threshold']}): **{ab['length']}**", rel_line,
             f"- average over all lengths: {s['overall']}\n"]
    rows = [[t] + [f"{c['score']:.1f} ({c['passed']}/{c['samples']})" if (c := s["table"][t].get(str(n))) else ""
                   for n in lengths] for t in result["tasks"]]
    rows.append(["**average**"] + [f"**{s['average'][str(n)]:.1f}**" for n in lengths])
    lines.append(md_table(["task"] + [str(n) for n in lengths], rows))
    per = result["timings"]["per_task_length"]
    lines.append("Seconds per task and length (own prefill and decoding; shared prefixes listed below):\n")
    lines.append(md_table(["task"] + [str(n) for n in lengths],
                          [[t] + [per[t].get(str(n), {}).get("seconds") for n in lengths] for t in result["tasks"]]))
    shared = result["timings"]["shared_prefixes"]
    if shared:
        lines.append(md_table(["shared prefix", "tokens", "seconds", "samples"],
                              [[g["group"], g["tokens"], g["seconds"], g["samples"]] for g in shared]))
    return "\n".join(lines)
