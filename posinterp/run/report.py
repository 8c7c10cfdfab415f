"""The run's report: a computed verdict, the before/after table, RULER (`run/ruler_report.py`), ROUGE
(`run/summarize_report.py`), curves during fine-tuning, figures, timings (`run/timings_report.py`).

Reads only what the stages wrote (results.json of each eval, posinterp.json and metrics.jsonl of
each fine-tune, timings.json of the run), so a report can be rebuilt at any time from a run folder.
Every sentence of the verdict is generated from those files; a row without results gets none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from posinterp.atomic import write_text
from posinterp.evals.passkey import SUCCESS_RATE
from posinterp.run import ruler_report, summarize_report
from posinterp.run.recipe import FINE_TUNED, METHOD_TITLES, ROW_TITLES, Recipe, fine_tune_dir, zero_shot_row
from posinterp.run.timings_report import timings_table

PPL_FIGURE = "perplexity.png"
LOSS_FIGURE = "train_loss.png"
PASSKEY_FIGURE = "passkey_accuracy.png"
CURVES_FIGURE = "training_curves.png"
CURVES_CSV = "training_curves.csv"
CONTROL = "nopi_ft"
"""The equal-budget control every other fine-tuned row is compared with (the paper's direct fine-tuning)."""


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(run_dir: Path, rows: list[str]) -> dict[str, dict[str, Any]]:
    """row → {"ppl": results or None, "passkey": results or None}."""
    return {row: {kind: _read(run_dir / "eval" / row / kind / "results.json") for kind in ("ppl", "passkey")}
            for row in rows}


def metrics(run_dir: Path, row: str) -> list[dict]:
    """The metrics.jsonl rows of a fine-tuned row's run ([] when absent); a torn last line is skipped."""
    path = run_dir / f"{fine_tune_dir(row)}-checkpoints" / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def is_eval(point: dict) -> bool:
    """An evaluation-during-training row (train's own rows have no "kind", or "kind": "train")."""
    return point.get("kind") == "eval"


def budget(run_dir: Path, row: str, points: list[dict]) -> dict | None:
    """{"steps", "tokens"} a fine-tuned row trained for: its checkpoint's record, else its last metrics row."""
    training = (_read(run_dir / fine_tune_dir(row) / "posinterp.json") or {}).get("training") or {}
    if "tokens" in training and "steps" in training:
        return {"steps": int(training["steps"]), "tokens": int(training["tokens"])}
    trained = [p for p in points if not is_eval(p) and "tokens" in p and "step" in p]
    return {"steps": int(trained[-1]["step"]), "tokens": int(trained[-1]["tokens"])} if trained else None


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.1f}" if x >= 100 else f"{x:.2f}"


def _tokens(n: int) -> str:
    """81920 → '81.9 k tokens'; 3276800 → '3.28 M tokens'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {unit} tokens"
    return f"{n} tokens"


def _budget(b: dict) -> str:
    return f"{b['steps']} steps, {_tokens(b['tokens'])}"


def _per_length(pk: dict) -> dict[int, float]:
    return {int(r["length"]): float(r["accuracy"]) for r in pk["summary"]["per_length"]}


def _per_window(ppl: dict | None) -> dict[int, float]:
    return {int(w["window"]): w["perplexity"] for w in (ppl or {}).get("windows", []) if w.get("perplexity") is not None}


def table(results: dict[str, dict[str, Any]], windows: list[int]) -> str:
    """Markdown: one row per model/method, passkey k_max and perplexity at each window."""
    head = ["", "passkey k_max", "passkey accuracy by length"] + [f"ppl @ {w}" for w in windows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, res in results.items():
        pk, per_window = res["passkey"], _per_window(res["ppl"])
        kmax = str(pk["summary"]["k_max"]) if pk else "—"
        by_len = ", ".join(f"{n}: {a:.0%}" for n, a in _per_length(pk).items()) if pk else "—"
        cells = [ROW_TITLES[row], kmax, by_len] + [_fmt(per_window.get(w)) for w in windows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retrieval_sentence(row: str, pk: dict, trained: dict | None) -> str:
    """Where a row retrieves the passkey (≥ the success rate of its trials), k_max, and after what budget."""
    rate = float(pk.get("success_rate", SUCCESS_RATE))
    acc = _per_length(pk)
    listed = lambda ns: ", ".join(f"{n} ({acc[n]:.0%})" for n in ns)  # noqa: E731
    got, missed = [n for n in acc if acc[n] >= rate], [n for n in acc if acc[n] < rate]
    who = ROW_TITLES[row] + (f", after {_budget(trained)}," if trained else "")
    kmax = f"k_max {pk['summary']['k_max']}"
    if not got:
        return f"{who} retrieves the passkey at no length tested: {listed(missed)}; {kmax}."
    if not missed:
        return f"{who} retrieves the passkey at every length tested, up to {max(got)}: {listed(got)}; {kmax}."
    return f"{who} retrieves the passkey at {listed(got)} but not at {listed(missed)}; {kmax}."


def _versus(res: dict, other: dict) -> list[str]:
    """'k_max A against B, x% against y% at N' and 'perplexity at W: p against q', where both have them."""
    parts = []
    pk, opk = res["passkey"], other["passkey"]
    if pk and opk:
        a, b = _per_length(pk), _per_length(opk)
        text = f"passkey k_max {pk['summary']['k_max']} against {opk['summary']['k_max']}"
        common = sorted(set(a) & set(b))
        if common:
            text += f", {a[common[-1]]:.0%} against {b[common[-1]]:.0%} at {common[-1]}"
        parts.append(text)
    pw, ow = _per_window(res["ppl"]), _per_window(other["ppl"])
    common = sorted(set(pw) & set(ow))
    if common:
        parts.append(f"perplexity at {common[-1]} {_fmt(pw[common[-1]])} against {_fmt(ow[common[-1]])}")
    return parts


def control_sentence(row: str, res: dict, control: dict, trained: dict | None, control_trained: dict | None) -> str | None:
    """How a `<method>_ft` row compares with the no-PI fine-tune (`nopi_ft`) at the budget both trained for."""
    parts = _versus(res, control)
    if not parts:
        return None
    if trained and control_trained and trained["tokens"] == control_trained["tokens"]:
        when = f"At the same budget ({_budget(trained)}), "
    elif trained and control_trained:
        when = f"At different budgets ({_tokens(trained['tokens'])} against {_tokens(control_trained['tokens'])}), "
    else:
        when = ""
    verb = "compares with"
    if res["passkey"] and control["passkey"]:
        k, ck = res["passkey"]["summary"]["k_max"], control["passkey"]["summary"]["k_max"]
        verb = "retrieves further than" if k > ck else "retrieves less far than" if k < ck else "retrieves as far as"
    return f"{when}{ROW_TITLES[row]} {verb} the fine-tune without PI: {'; '.join(parts)}."


def zero_step_sentence(row: str, res: dict, before: dict, trained: dict | None) -> str | None:
    """What fine-tuning changed for a method: its `<method>_ft` row against its 0-step row."""
    changes = []
    if res["passkey"] and before["passkey"]:
        changes.append(f"passkey k_max from {before['passkey']['summary']['k_max']} to "
                       f"{res['passkey']['summary']['k_max']}")
    pw, bw = _per_window(res["ppl"]), _per_window(before["ppl"])
    common = sorted(set(pw) & set(bw))
    if common:
        changes.append(f"perplexity at {common[-1]} from {_fmt(bw[common[-1]])} to {_fmt(pw[common[-1]])}")
    if not changes:
        return None
    spent = f" ({_budget(trained)})" if trained else ""
    return f"Fine-tuning {METHOD_TITLES[FINE_TUNED[row]]}{spent} moved its {' and its '.join(changes)}."


def curve_sentence(row: str, points: list[dict], rate: float = SUCCESS_RATE) -> str | None:
    """When, during fine-tuning, a row first retrieved the passkey at its longest evaluated length."""
    evals = sorted((p for p in points if is_eval(p)), key=lambda p: p.get("step", 0))
    parts = []
    lengths = sorted({int(n) for p in evals for n in (p.get("passkey") or {})})
    if lengths:
        n = lengths[-1]
        seen = [p for p in evals if str(n) in (p.get("passkey") or {})]
        first = next((p for p in seen if p["passkey"][str(n)] >= rate), None)
        if first:
            parts.append(f"first retrieved the passkey at {n} ({first['passkey'][str(n)]:.0%}) after "
                         f"{_tokens(first['tokens'])} (step {first['step']})")
        else:
            parts.append(f"did not retrieve the passkey at {n} in {len(seen)} evaluation{'s' * (len(seen) != 1)} "
                         f"(up to {_tokens(seen[-1]['tokens'])}, step {seen[-1]['step']})")
    ppl = [p for p in evals if p.get("ppl") is not None]
    if len(ppl) >= 2:
        window = f" at {ppl[-1]['ppl_window']}" if ppl[-1].get("ppl_window") else ""
        parts.append(f"its held-out perplexity{window} went from {_fmt(ppl[0]['ppl'])} (step {ppl[0]['step']}) "
                     f"to {_fmt(ppl[-1]['ppl'])} (step {ppl[-1]['step']})")
    return f"During fine-tuning, {ROW_TITLES[row]} {'; '.join(parts)}." if parts else None


def best_perplexity_sentence(results: dict[str, dict[str, Any]]) -> str | None:
    """The lowest (and highest) perplexity at the longest window any row was measured at."""
    per = {row: _per_window(res["ppl"]) for row, res in results.items()}
    windows = {w for values in per.values() for w in values}
    if not windows:
        return None
    w = max(windows)
    ranked = sorted(((values[w], row) for row, values in per.items() if w in values))
    best = f"{ROW_TITLES[ranked[0][1]]} ({_fmt(ranked[0][0])})"
    if len(ranked) == 1:
        return f"Perplexity at the longest window, {w}: {best}."
    return (f"Lowest perplexity at the longest window, {w}: {best}; highest: {ROW_TITLES[ranked[-1][1]]} "
            f"({_fmt(ranked[-1][0])}), of {len(ranked)} rows measured there.")


def verdict(results: dict[str, dict[str, Any]], budgets: dict[str, dict | None],
            curves: dict[str, list[dict]]) -> list[str]:
    """The report's summary sentences, in order: retrieval per row, each `<method>_ft` against the
    no-PI control and against its 0-step row, the curves during fine-tuning, the best perplexity."""
    out = [retrieval_sentence(row, res["passkey"], budgets.get(row)) for row, res in results.items() if res["passkey"]]
    for row, res in results.items():
        if row in FINE_TUNED and row != CONTROL and CONTROL in results:
            out.append(control_sentence(row, res, results[CONTROL], budgets.get(row), budgets.get(CONTROL)))
        before = zero_shot_row(row)
        if before in results:
            out.append(zero_step_sentence(row, res, results[before], budgets.get(row)))
    out += [curve_sentence(row, points) for row, points in curves.items()]
    out.append(best_perplexity_sentence(results))
    return [s[0].upper() + s[1:] for s in out if s]


def _curve_columns(curves: dict[str, list[dict]]) -> tuple[list[int], list[int]]:
    lengths = sorted({int(n) for pts in curves.values() for p in pts for n in (p.get("passkey") or {})})
    windows = sorted({int(p["ppl_window"]) for pts in curves.values() for p in pts if p.get("ppl_window")})
    return lengths, windows


def curves_table(curves: dict[str, list[dict]]) -> str:
    """Markdown: one line per evaluation during fine-tuning (row, step, tokens, passkey by length, ppl)."""
    lengths, windows = _curve_columns(curves)
    ppl_head = f"ppl @ {windows[0]}" if len(windows) == 1 else "ppl (window)"
    head = ["", "step", "tokens"] + [f"passkey @ {n}" for n in lengths] + [ppl_head]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, points in curves.items():
        for p in points:
            keys = p.get("passkey") or {}
            ppl = _fmt(p.get("ppl"))
            if len(windows) > 1 and p.get("ppl") is not None:
                ppl += f" ({p.get('ppl_window', '?')})"
            cells = [ROW_TITLES[row], str(p.get("step", "?")), str(p.get("tokens", "?"))]
            cells += [f"{keys[str(n)]:.0%}" if str(n) in keys else "—" for n in lengths] + [ppl]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_csv(curves: dict[str, list[dict]]) -> str:
    """The same points as CSV: row, step, tokens, passkey_<length>..., ppl, ppl_window."""
    lengths, _ = _curve_columns(curves)
    lines = [",".join(["row", "step", "tokens"] + [f"passkey_{n}" for n in lengths] + ["ppl", "ppl_window"])]
    for row, points in curves.items():
        for p in points:
            keys = p.get("passkey") or {}
            values = [row, p.get("step"), p.get("tokens")] + [keys.get(str(n)) for n in lengths]
            values += [p.get("ppl"), p.get("ppl_window")]
            lines.append(",".join("" if v is None else str(v) for v in values))
    return "\n".join(lines) + "\n"


def _title(recipe: Recipe, factor: float | None) -> str:
    ext = recipe.extend
    factor = factor if factor is not None else ext.factor
    how = f"×{factor:g}" if factor is not None else f"to {ext.target_length}"
    return f"# {recipe.name}: {recipe.model}, {METHOD_TITLES[ext.method]} {how}"


def _protocol(results: dict[str, dict[str, Any]]) -> list[str]:
    """The perplexity and passkey protocol lines (from the run with the most windows; the original row stops at L)."""
    lines = []
    first_ppl = max((r["ppl"] for r in results.values() if r["ppl"]), key=lambda r: len(r["windows"]), default=None)
    first_pk = next((r["passkey"] for r in results.values() if r["passkey"]), None)
    if first_ppl:
        cfgp = first_ppl["config"]
        n_docs = len(first_ppl["documents"])
        lines.append(f"Perplexity: {first_ppl['corpus']}, {n_docs} document{'s' if n_docs != 1 else ''}"
                     + (f" truncated to {cfgp['max_tokens']} tokens" if cfgp.get("max_tokens") else "")
                     + ", sliding window with stride "
                     + ", ".join(f"{w['stride']} at {w['window']}" for w in first_ppl["windows"])
                     + f", {cfgp['dtype']} (fp32 head).")
    if first_pk:
        trials = int(first_pk["config"]["trials"])
        lines.append(f"Passkey: {trials} trial{'s' if trials != 1 else ''} per length, seed {first_pk['config']['seed']}, "
                     "k_max by the paper's 20% rule. Rows evaluated beyond their configured window say so in their "
                     "results.json.")
    return lines


def _figures(run_dir: Path, results: dict[str, dict[str, Any]], losses: dict[str, list[dict]],
             curves: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """Draw the report's figures; returns (title, file name) of each one drawn."""
    from posinterp.evals import plots

    images = []
    ppl_runs = [{**res["ppl"], "label": ROW_TITLES[row]} for row, res in results.items() if res["ppl"]]
    if ppl_runs:
        plots.perplexity_by_window(ppl_runs, run_dir / PPL_FIGURE)
        images.append(("Perplexity against window", PPL_FIGURE))
    pk_runs = [{**res["passkey"], "label": ROW_TITLES[row]} for row, res in results.items() if res["passkey"]]
    if pk_runs:
        plots.passkey_accuracy(pk_runs, run_dir / PASSKEY_FIGURE)
        images.append(("Passkey accuracy against prompt length", PASSKEY_FIGURE))
    if curves:
        plots.training_curves({ROW_TITLES[row]: pts for row, pts in curves.items()}, run_dir / CURVES_FIGURE)
        images.append(("Passkey and perplexity during fine-tuning", CURVES_FIGURE))
    if losses:
        plots.training_loss({ROW_TITLES[row]: pts for row, pts in losses.items()}, run_dir / LOSS_FIGURE)
        images.append(("Fine-tuning loss", LOSS_FIGURE))
    return images


def write_report(recipe: Recipe, run_dir: Path, timings: dict[str, float], factor: float | None = None) -> dict:
    """report.md, its images and training_curves.csv in `run_dir`; returns the numbers of the table."""
    from posinterp.versions import versions

    rows = list(recipe.eval.rows)
    windows = sorted(int(w) for w in recipe.eval.windows) if recipe.eval.ppl is not None else []  # `ppl: null`
    results = collect(run_dir, rows)
    points = {row: metrics(run_dir, row) for row in rows if row in FINE_TUNED}
    budgets = {row: budget(run_dir, row, pts) for row, pts in points.items()}
    losses = {row: [p for p in pts if not is_eval(p)] for row, pts in points.items() if pts}
    curves = {row: [p for p in pts if is_eval(p) and (p.get("passkey") or p.get("ppl") is not None)]
              for row, pts in points.items()}
    curves = {row: pts for row, pts in curves.items() if pts}
    images = _figures(run_dir, results, {r: p for r, p in losses.items() if p}, curves)
    lines = [_title(recipe, factor), ""]
    if recipe.notes:
        lines += [recipe.notes.strip(), ""]
    said = verdict(results, budgets, curves)
    if said:
        lines += ["## Verdict", "", "Computed from the result files of this run:", ""] + [f"- {s}" for s in said] + [""]
    if recipe.eval.ppl is not None or recipe.eval.passkey is not None:
        lines += ["## Before and after", "", table(results, windows), ""] + _protocol(results)
    given = recipe.given.get("train") or {}
    first_ft = next((row for row in rows if row in FINE_TUNED), None)
    settings = _read(run_dir / fine_tune_dir(first_ft) / "settings.json") if first_ft else None
    if given and first_ft:
        lines += ["", "Fine-tuning (every fine-tuned row, same settings and data order): "
                  + ", ".join(f"{k}={getattr(recipe.train, k, v)}" for k, v in given.items())  # after --budget trims
                  + (f" (resolved: {settings.get('seq_len', '?')} tokens per sequence)" if settings else "")
                  + (f"; nopi_ft at seq_len={recipe.eval.nopi_ft_seq_len}" if recipe.eval.nopi_ft_seq_len and
                     "nopi_ft" in rows else "")]
    ruler_lines, ruler = ruler_report.section(run_dir, rows)
    summary_lines, rouge = summarize_report.section(run_dir, rows)
    lines += ruler_lines + summary_lines
    if curves:
        write_text(run_dir / CURVES_CSV, curves_csv(curves))
        lines += ["", "## During fine-tuning", "", curves_table(curves), "", f"The same points: [{CURVES_CSV}]({CURVES_CSV})."]
    lines += ["", "## Figures", ""]
    for title, name in images:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    heatmaps = [(row, run_dir / "eval" / row / "passkey") for row in rows
                if (run_dir / "eval" / row / "passkey" / "heatmap.png").is_file()]
    if heatmaps:
        lines += ["### Passkey heatmaps (length × depth)", ""]
        for row, folder in heatmaps:
            rel = os.path.relpath(folder / "heatmap.png", run_dir)
            lines += [f"{ROW_TITLES[row]}:", "", f"![{ROW_TITLES[row]}]({rel})", ""]
    lines += timings_table(timings, _read(run_dir / "estimates.json"))
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return {row: {"k_max": res["passkey"]["summary"]["k_max"] if res["passkey"] else None,
                  "ppl": _per_window(res["ppl"]),
                  **({"tokens": budgets[row]["tokens"]} if budgets.get(row) else {}),
                  **({"ruler": ruler[row]} if row in ruler else {}), **({"rouge": rouge[row]} if row in rouge else {})}
            for row, res in results.items()}
