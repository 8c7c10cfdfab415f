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


def passkey_accuracy(results: list[dict], path: Path | str) -> None:
    """Passkey accuracy against prompt length, one line per run."""
    fig, ax = _figure()
    for r in results:
        rows = r["summary"]["per_length"]
        ax.plot([x["length"] for x in rows], [x["accuracy"] for x in rows], marker="o", markersize=3,
                label=f"{r['label']} (k_max {r['summary']['k_max']})")
    ax.axhline(0.2, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("passkey retrieval (dotted: the 20% rule for k_max)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def perplexity_by_window(results: list[dict], path: Path | str) -> None:
    """Corpus perplexity against evaluation window, one line per run (log-log)."""
    fig, ax = _figure()
    for r in results:
        rows = [w for w in r["windows"] if w.get("perplexity") is not None]
        ax.plot([w["window"] for w in rows], [w["perplexity"] for w in rows], marker="o", markersize=3,
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
    ax.set_xlabel("evaluation window (tokens)")
    ax.set_ylabel("perplexity")
    corpora = sorted({r.get("corpus", "") for r in results})
    ax.set_title("sliding-window perplexity: " + "; ".join(corpora)[:90], fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, path)


def training_loss(curves: dict[str, list[dict]], path: Path | str) -> None:
    """Training loss against optimizer step, one line per fine-tune (`curves`: label → metrics.jsonl rows)."""
    fig, ax = _figure()
    for label, points in curves.items():
        pts = [p for p in points if "loss" in p and "step" in p]
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], marker="o", markersize=2, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (nats/token)")
    ax.set_title("fine-tuning loss")
    ax.legend(fontsize=8)
    _save(fig, path)


def training_curves(curves: dict[str, list[dict]], path: Path | str, success_rate: float = 0.2) -> None:
    """Evaluations during fine-tuning against training tokens: one panel per passkey length and one
    for held-out perplexity, one line per fine-tune (`curves`: label → its `"kind": "eval"` rows)."""
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
    for i, (kind, n) in enumerate(panels):
        ax = fig.add_subplot(grid, cols, i + 1)
        for label, rows in curves.items():
            if kind == "passkey":
                pts = [(r["tokens"], r["passkey"][str(n)]) for r in rows if str(n) in (r.get("passkey") or {})]
            else:
                pts = [(r["tokens"], r["ppl"]) for r in rows if r.get("ppl") is not None]
            if pts:
                ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
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
