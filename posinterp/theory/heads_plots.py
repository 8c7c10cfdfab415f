"""The pictures of `theory heads`: each head's attention by offset, and runs compared side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure(width: float, height: float, rows: int, cols: int) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def plot_heads(path: Path, result: dict) -> None:
    """Four panels: offset 1 vs 2 per head, the previous-token heads' profile, induction, passkey copy."""
    import numpy as np

    ph = {k: np.asarray(v) for k, v in result["per_head"].items()}
    sets = result["followed_head_sets"]
    fig, ax = _figure(13, 9, 2, 2)
    prev = sets["previous_token"]
    text = ph["text_profile"]
    a = ax[0][0]
    a.scatter(text[..., 1].ravel(), text[..., 2].ravel(), s=8, c="0.6", label="all heads")
    if prev:
        a.scatter([text[h, i, 1] for h, i in prev], [text[h, i, 2] for h, i in prev], s=18, c="tab:red",
                  label="previous-token heads" + (" (reference)" if result["reference"] else ""))
    a.plot([0, 1], [0, 1], "k--", lw=0.7)
    a.set(xlabel="text: mass at offset 1", ylabel="text: mass at offset 2", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
          title="per head, natural text")
    a.legend(fontsize=8)
    a = ax[0][1]
    offsets = np.arange(result["max_offset"] + 1)
    for probe, color in (("text", "tab:blue"), ("passkey", "tab:orange")):
        prof = ph[f"{probe}_profile"]
        for h, i in prev:
            a.plot(offsets, prof[h, i, : len(offsets)], color=color, lw=0.5, alpha=0.4)
        if prev:
            a.plot(offsets, np.mean([prof[h, i, : len(offsets)] for h, i in prev], 0), color=color, lw=2,
                   label=f"{probe}, mean of {len(prev)} heads")
    a.set(xlabel="relative offset (tokens back)", ylabel="attention mass", title="previous-token heads by offset",
          xticks=offsets)
    if prev:
        a.legend(fontsize=8)
    else:  # a legend with nothing to label is a matplotlib warning on the user's screen
        a.text(0.5, 0.5, "no previous-token heads", ha="center", va="center", transform=a.transAxes, fontsize=9)
    for a, (probe, keys, title) in zip(ax[1], (("repeat", ("induction", "skip"), "repeated random tokens"),
                                               ("passkey", ("copy", "skip"), "passkey digits (teacher-forced)")),
                                       strict=True):
        x, y = ph[f"{probe}_{keys[0]}"], ph[f"{probe}_{keys[1]}"]
        top = sets["induction" if probe == "repeat" else "passkey_copy"]
        a.scatter(x.ravel(), y.ravel(), s=8, c="0.6", label="all heads")
        a.scatter([x[h, i] for h, i in top], [y[h, i] for h, i in top], s=18, c="tab:green",
                  label=f"top {len(top)} {'induction' if probe == 'repeat' else 'copy'} heads"
                  + (" (reference)" if result["reference"] else ""))
        a.plot([0, 1], [0, 1], "k--", lw=0.7)
        a.set(xlabel=f"{keys[0]}: token after the earlier occurrence", ylabel="skip: the token after that",
              xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title=title)
        a.legend(fontsize=8)
    fig.suptitle(f"{result['label']}: where the heads attend ({result['config']['dtype']}, {result['length']} tokens)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def plot_compare(path: Path, results: list[tuple[str, dict]]) -> None:
    """Several measurements (same heads followed): previous-token profile, induction and copy vs skip."""
    import numpy as np

    fig, ax = _figure(14, 4.6, 1, 3)
    width = 0.8 / max(len(results), 1)
    for n, (name, r) in enumerate(results):
        prev = r["summary"]["text"]["previous_token_heads"]
        if prev["mean_profile"]:
            ax[0][0].plot(np.arange(r["max_offset"] + 1), prev["mean_profile"][: r["max_offset"] + 1], marker="o",
                          ms=3, label=name)
        for a, key, parts in ((ax[0][1], "repeat", ("induction", "skip", "duplicate")),
                              (ax[0][2], "passkey_copy", ("copy", "skip", "duplicate"))):
            vals = [r["summary"][key][f"top_{p}"] or 0.0 for p in parts]
            a.bar(np.arange(len(parts)) + n * width, vals, width, label=name)
            a.set_xticks(np.arange(len(parts)) + 0.4 - width / 2, parts)
    ax[0][0].set(xlabel="relative offset", ylabel="mean attention mass", title="previous-token heads (natural text)")
    ax[0][1].set(ylabel="mean attention mass", title="top induction heads (repeated random tokens)")
    ax[0][2].set(ylabel="mean attention mass", title="top copy heads (passkey digits)")
    for a in ax[0]:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), format="png")
