"""Figures for eval results, drawn headless (matplotlib's Agg canvas; no pyplot global state).

Each function takes results dicts as written by the evals (`results.json`) and a PNG path.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any


def _figure(width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Any, path: Path | str) -> None:
    """Write the PNG atomically: a temporary sibling renamed into place (a report never shows half a figure)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    fig.tight_layout()
    try:
        fig.savefig(str(tmp), format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def passkey_heatmap(result: dict, path: Path | str) -> None:
    """Passkey accuracy on a depth (rows) × length (columns) grid, with k_max marked."""
    grid = result["summary"]["grid"]
    lengths, depths = grid["lengths"], grid["depths"]
    # (depths, lengths); cells without trials stay blank
    values = [[grid["accuracy"][j][i] if grid["accuracy"][j][i] is not None else float("nan")
               for j in range(len(lengths))] for i in range(len(depths))]
    fig, ax = _figure(max(5.0, 0.45 * len(lengths) + 2.5), max(3.0, 0.35 * len(depths) + 1.8))
    image = ax.imshow(values, aspect="auto", origin="lower", vmin=0.0, vmax=1.0, cmap="RdYlGn",
                      interpolation="nearest")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], rotation=60, fontsize=7)
    ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=7)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("key depth")
    kmax = result["summary"]["k_max"]
    ax.set_title(f"passkey: {result['label']} (k_max {kmax}, window {result['window']})", fontsize=9)
    if kmax in lengths:
        ax.axvline(lengths.index(kmax) + 0.5, color="black", linewidth=1.0, linestyle="--")
    fig.colorbar(image, ax=ax, label="accuracy")
    _save(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
"""One marker shape per row, so rows whose lines coincide still show as distinct points."""


LINESTYLES = ("-", "--", "-.", ":")
"""Alternating dash patterns: a line drawn over another with the same values lets it show in its gaps."""


def marker(i: int) -> str:
    return MARKERS[i % len(MARKERS)]


def linestyle(i: int) -> str:
    return LINESTYLES[i % len(LINESTYLES)]


def dodge(n: int, spread: float) -> list[float]:
    """Horizontal offsets for `n` rows, centred on 0 and `spread` apart: rows with identical values are
    drawn side by side instead of on top of each other (the last drawn would hide the rest)."""
    return [(i - (n - 1) / 2) * spread for i in range(n)]


def passkey_accuracy(results: list[dict], path: Path | str) -> Any:
    """Passkey accuracy as a heat table: one line per run, one column per prompt length, the percentage
    written in each cell (a line plot hid every run at 100% under the last one drawn). Lengths a run did
    not test stay grey and say "not run". Returns the figure."""
    lengths = sorted({int(x["length"]) for r in results for x in r["summary"]["per_length"]})
    acc = [{int(x["length"]): float(x["accuracy"]) for x in r["summary"]["per_length"]} for r in results]
    values = [[a.get(n, float("nan")) for n in lengths] for a in acc]  # (runs, lengths)
    labels = [f"{r['label']} (k_max {r['summary']['k_max']})" for r in results]
    # room for the longest row label (~0.06 in per character at 8 pt), ~1 in per length, the colour bar
    width = min(16.0, 1.4 + 0.06 * max(len(s) for s in labels) + 1.0 * len(lengths))
    fig, ax = _figure(width, 1.4 + 0.36 * len(results))
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if math.isnan(v):
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="#555555")
                continue
            r, g, b, _ = cmap(v)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, f"{v:.0%}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
    ax.set_yticks(range(len(results)), labels, fontsize=8)
    ax.tick_params(length=0)
    ax.set_xlabel("prompt length (tokens)")
    trials = sorted({int(r["config"]["trials"]) for r in results if "trials" in r.get("config", {})})
    per = f"; {'/'.join(map(str, trials))} trial{'s' * (trials != [1])} per cell" if trials else ""
    ax.set_title(f"passkey accuracy (k_max: the longest length with every length up to it ≥ 20%{per})", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy", fraction=0.04, pad=0.02)
    _save(fig, path)
    return fig


def perplexity_by_window(results: list[dict], path: Path | str) -> Any:
    """Corpus perplexity against evaluation window, one line per run (log-log). Each run has its own
    marker and is shifted sideways by a few percent of the window, so runs with identical values (the
    original model and plain extrapolation up to L) stay visible side by side. Returns the figure."""
    fig, ax = _figure(7.0, 4.6 + 0.12 * len(results))
    # offsets in octaves: ±0.12 octave in all, well inside the gap between windows a factor 2 apart
    shifts = dodge(len(results), min(0.05, 0.24 / max(1, len(results) - 1)))
    for i, r in enumerate(results):
        rows = [w for w in r["windows"] if w.get("perplexity") is not None]
        ax.plot([w["window"] * 2 ** shifts[i] for w in rows], [w["perplexity"] for w in rows],
                marker=marker(i), linestyle=linestyle(i), markersize=5, linewidth=1.4,
                label=f"{r['label']} (window {r['window']})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted({w["window"] for r in results for w in r["windows"]})
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
    ax.minorticks_off()
    # a log axis inside one decade has no major tick: label 1-2-3-4-5-6-8 steps in plain numbers
    from matplotlib.ticker import LogLocator, ScalarFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("evaluation window (tokens; each run's points shifted slightly sideways)", fontsize=8)
    ax.set_ylabel("perplexity")
    corpora = sorted({r.get("corpus", "") for r in results})
    ax.set_title("sliding-window perplexity: " + "; ".join(corpora)[:90], fontsize=8)
    # below the axes: inside, a legend would cover some run's points
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    _save(fig, path)
    return fig


def training_loss(curves: dict[str, list[dict]], path: Path | str) -> Any:
    """Training loss against optimizer step, one line per fine-tune (`curves`: label → metrics.jsonl rows)."""
    fig, ax = _figure()
    for i, (label, points) in enumerate(curves.items()):
        pts = [p for p in points if "loss" in p and "step" in p]
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker=marker(i),
                linestyle=linestyle(i), markersize=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("fine-tuning loss")
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def training_curves(curves: dict[str, list[dict]], path: Path | str, success_rate: float = 0.2) -> Any:
    """Evaluations during fine-tuning against training tokens: one panel per passkey length and one
    for held-out perplexity, one line per fine-tune (`curves`: label → its `"kind": "eval"` rows), each
    with its own marker and shifted sideways by 1% of the token range, so fine-tunes with equal values
    (both at 0% retrieval) stay visible. Returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths = sorted({int(n) for rows in curves.values() for r in rows for n in (r.get("passkey") or {})})
    has_ppl = any(r.get("ppl") is not None for rows in curves.values() for r in rows)
    panels = [("passkey", n) for n in lengths] + ([("ppl", None)] if has_ppl else [])
    if not panels:
        raise ValueError("training_curves: no passkey or perplexity values in the evaluation rows")
    cols = min(3, len(panels))
    grid = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols + 0.6, 3.0 * grid + 0.4), dpi=120)
    FigureCanvasAgg(fig)
    span = max((r["tokens"] for rows in curves.values() for r in rows), default=0) / 1e6
    shifts = dict(zip(curves, dodge(len(curves), 0.012 * span)))
    for i, (kind, n) in enumerate(panels):
        ax = fig.add_subplot(grid, cols, i + 1)
        for k, (label, rows) in enumerate(curves.items()):
            if kind == "passkey":
                pts = [(r["tokens"], r["passkey"][str(n)]) for r in rows if str(n) in (r.get("passkey") or {})]
            else:
                pts = [(r["tokens"], r["ppl"]) for r in rows if r.get("ppl") is not None]
            if pts:
                ax.plot([p[0] / 1e6 + shifts[label] for p in pts], [p[1] for p in pts], marker=marker(k),
                        linestyle=linestyle(k), markersize=4, label=label)
        ax.set_xlabel("training tokens (M)", fontsize=8)
        if kind == "passkey":
            ax.axhline(success_rate, color="grey", linewidth=0.8, linestyle=":")
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"passkey accuracy at {n} tokens", fontsize=9)
        else:
            windows = sorted({r.get("ppl_window") for rows in curves.values() for r in rows if r.get("ppl_window")})
            ax.set_title("held-out perplexity" + (f" (window {', '.join(map(str, windows))})" if windows else ""),
                         fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    _save(fig, path)
    return fig
