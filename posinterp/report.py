"""The run's report: a before/after table, passkey heatmaps, perplexity curves, the loss curve.

Reads only what the stages wrote (results.json of each eval, metrics.jsonl of each fine-tune,
timings.json of the run), so a report can be rebuilt at any time from a run folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from posinterp.atomic import write_text
from posinterp.recipe import ROW_TITLES, Recipe

PPL_FIGURE = "perplexity.png"
LOSS_FIGURE = "train_loss.png"
PASSKEY_FIGURE = "passkey_accuracy.png"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(run_dir: Path, rows: list[str]) -> dict[str, dict[str, Any]]:
    """row → {"ppl": results or None, "passkey": results or None}."""
    return {row: {kind: _read(run_dir / "eval" / row / kind / "results.json") for kind in ("ppl", "passkey")}
            for row in rows}


def _loss_curves(run_dir: Path) -> dict[str, list[dict]]:
    curves = {}
    for name, title in (("pi-ft", "PI fine-tune"), ("nopi-ft", "fine-tune without PI")):
        path = run_dir / f"{name}-checkpoints" / "metrics.jsonl"
        if path.is_file():
            curves[title] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return curves


def _plot_loss(curves: dict[str, list[dict]], path: Path) -> None:
    from posinterp.plots import _figure, _save

    fig, ax = _figure()
    for title, points in curves.items():
        pts = [p for p in points if "loss" in p and "step" in p]
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker="o", markersize=2, label=title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("fine-tuning loss")
    ax.legend(fontsize=8)
    _save(fig, path)


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.1f}" if x >= 100 else f"{x:.2f}"


def table(results: dict[str, dict[str, Any]], windows: list[int]) -> str:
    """Markdown: one row per model/method, passkey k_max and perplexity at each window."""
    head = ["", "passkey k_max", "passkey accuracy by length"] + [f"ppl @ {w}" for w in windows]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, res in results.items():
        pk, ppl = res["passkey"], res["ppl"]
        kmax = str(pk["summary"]["k_max"]) if pk else "—"
        by_len = ", ".join(f"{r['length']}: {r['accuracy']:.0%}" for r in pk["summary"]["per_length"]) if pk else "—"
        per_window = {w["window"]: w["perplexity"] for w in ppl["windows"]} if ppl else {}
        cells = [ROW_TITLES[row], kmax, by_len] + [_fmt(per_window.get(w)) for w in windows]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(recipe: Recipe, run_dir: Path, timings: dict[str, float]) -> dict:
    """report.md and its images in `run_dir`; returns the numbers of the table."""
    from posinterp import plots
    from posinterp.versions import versions

    rows = list(recipe.eval.rows)
    windows = [int(w) for w in recipe.eval.windows]
    results = collect(run_dir, rows)
    images = []
    ppl_runs = []
    for row, res in results.items():
        if res["ppl"]:
            ppl_runs.append({**res["ppl"], "label": ROW_TITLES[row]})
    if ppl_runs:
        plots.perplexity_by_window(ppl_runs, run_dir / PPL_FIGURE)
        images.append(("Perplexity against window", PPL_FIGURE))
    pk_runs = [{**res["passkey"], "label": ROW_TITLES[row]} for row, res in results.items() if res["passkey"]]
    if pk_runs:
        plots.passkey_accuracy(pk_runs, run_dir / PASSKEY_FIGURE)
        images.append(("Passkey accuracy against prompt length", PASSKEY_FIGURE))
    curves = _loss_curves(run_dir)
    if curves:
        _plot_loss(curves, run_dir / LOSS_FIGURE)
        images.append(("Fine-tuning loss", LOSS_FIGURE))
    # the protocol line describes the run with the most windows (the original row stops at L)
    first_ppl = max((r["ppl"] for r in results.values() if r["ppl"]), key=lambda r: len(r["windows"]), default=None)
    first_pk = next((r["passkey"] for r in results.values() if r["passkey"]), None)
    lines = [f"# {recipe.name}: {recipe.model}, PI ×{recipe.extend.get('factor', '?')}", ""]
    if recipe.notes:
        lines += [recipe.notes.strip(), ""]
    lines += ["## Before and after", "", table(results, windows), ""]
    if first_ppl:
        cfgp = first_ppl["config"]
        n_docs = len(first_ppl["documents"])
        lines.append(f"Perplexity: {first_ppl['corpus']}, {n_docs} document{'s' if n_docs != 1 else ''}"
                     + (f" truncated to {cfgp['max_tokens']} tokens" if cfgp.get("max_tokens") else "")
                     + ", sliding window with stride "
                     + ", ".join(f"{w['stride']} at {w['window']}" for w in first_ppl["windows"])
                     + f", {cfgp['dtype']} (fp32 head).")
    if first_pk:
        cfgk = first_pk["config"]
        trials = int(cfgk["trials"])
        lines.append(f"Passkey: {trials} trial{'s' if trials != 1 else ''} per length, seed {cfgk['seed']}, k_max by the paper's "
                     "20% rule. Rows evaluated beyond their configured window say so in their results.json.")
    settings = _read(run_dir / "pi-ft" / "settings.json") or {}
    if recipe.train:
        lines += ["", "Fine-tuning: " + ", ".join(f"{k}={v}" for k, v in recipe.train.items())
                  + (f" (resolved: {settings.get('seq_len', '?')} tokens per sequence)" if settings else "")]
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
    lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [f"| **all stages** | **{sum(timings.values()):.0f}** |", "", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return {row: {"k_max": res["passkey"]["summary"]["k_max"] if res["passkey"] else None,
                  "ppl": {w["window"]: w["perplexity"] for w in res["ppl"]["windows"]} if res["ppl"] else {}}
            for row, res in results.items()}
