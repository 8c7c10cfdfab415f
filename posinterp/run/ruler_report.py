"""The report's RULER section: each row's average score at each length and its effective length under both of
`evals/ruler_score`'s rules, read from the rows' `eval/<row>/ruler/results.json` alone.

- absolute: the largest length whose average over the tasks is ≥ 85.6 (RULER's threshold), as is every
  shorter one's;
- relative: the same with the threshold 0.856 × B, B the original model's own level: the original row's mean
  average over its lengths within its window (in a run, the original row's results are what
  `eval ruler --reference` names by hand). Without an original row with RULER results, the absolute rule alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.evals import ruler_score as rs
from posinterp.evals.common import RESULTS_JSON, md_table
from posinterp.run.recipe import ROW_TITLES


def collect(run_dir: Path, rows: list[str]) -> dict[str, dict]:
    """row → its RULER results, for the rows that have them."""
    paths = {row: Path(run_dir) / "eval" / row / "ruler" / RESULTS_JSON for row in rows}
    return {row: json.loads(p.read_text()) for row, p in paths.items() if p.is_file()}


def numbers(run_dir: Path, results: dict[str, dict]) -> tuple[dict[str, dict], dict | None, str]:
    """Per row: averages by length and both effective lengths; the reference (the original row's base, as
    `ruler_score.read_reference` reads it) or None, and why there is none."""
    why, ref = "no original row with RULER results in this run: the absolute rule alone", None
    out: dict[str, dict] = {}
    for row, res in results.items():
        averages = {int(n): float(a) for n, a in res["summary"]["average"].items()}
        relative = None
        if "original" in results:
            try:
                ref = rs.read_reference(Path(run_dir) / "eval" / "original" / "ruler", list(res["tasks"]))
                relative = rs.effective_length(averages, rs.RELATIVE_SHARE * ref["base"])
            except PosinterpError as err:  # e.g. other tasks than the original row's: no common reference
                why = f"the original row gives no reference for {row} ({err})"
        out[row] = {"average": averages, "effective_length": {
            "absolute": res["summary"]["effective_length"]["absolute"]["length"], "relative": relative}}
    return out, ref, why


def section(run_dir: Path, rows: list[str]) -> tuple[list[str], dict[str, dict]]:
    """The report's `## RULER` lines (none when no row has RULER results) and the numbers per row."""
    results = collect(run_dir, rows)
    if not results:
        return [], {}
    per, ref, why = numbers(run_dir, results)
    lengths = sorted({n for p in per.values() for n in p["average"]})
    rel_head = (f"effective length (≥ {rs.RELATIVE_SHARE} × {ref['base']} = {rs.RELATIVE_SHARE * ref['base']:.1f})"
                if ref else "effective length (relative)")
    head = [""] + [f"RULER average @ {n}" for n in lengths] + [f"effective length (≥ {rs.ABSOLUTE})", rel_head]
    table = [[ROW_TITLES[row]] + [_score(p["average"].get(n)) for n in lengths]
             + [p["effective_length"]["absolute"], _or_dash(p["effective_length"]["relative"])]
             for row, p in per.items()]
    return ["", "## RULER", "", md_table(head, table).rstrip("\n"), "", _protocol(next(iter(results.values())), ref, why)], per


def _score(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _or_dash(x: Any) -> str:
    return "—" if x is None else str(x)


def _protocol(first: dict, ref: dict | None, why: str) -> str:
    """The section's protocol sentence, from the first row's results (every row runs the same section)."""
    samples = first["samples_per_length"]
    counts = sorted(set(samples.values()))
    each = str(counts[0]) if len(counts) == 1 else ", ".join(f"{k} at {n}" for n, k in samples.items())
    tasks = first["tasks"]
    rule = (f"relative: ≥ {rs.RELATIVE_SHARE} × B, B = {ref['base']} the original row's mean average over its "
            f"lengths within its window {ref['reference_window']} ({', '.join(map(str, ref['reference_lengths']))})"
            if ref else f"relative: not computed, {why}")
    return (f"RULER's synthetic tasks ({len(tasks)}: {', '.join(tasks)}), {each} sample(s) per task and length, seed "
            f"{first['config']['seed']}, {first['prompt']['kind']} prompts; a cell is the mean over the tasks of "
            f"RULER's string_match_all score. Effective length: the largest length whose average is ≥ the threshold, "
            f"as is every shorter one's; absolute: ≥ {rs.ABSOLUTE} (RULER's, Llama-2-7B at 4K); {rule}. Per task: "
            "each row's eval/<row>/ruler/results.md.")
