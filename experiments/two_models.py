"""Issue 21 item 7: the two real models' fine-tuning curves on one figure, from their committed summaries.

    .venv/bin/python experiments/two_models.py      # → docs/results/two-models.png (seconds, no model loaded)

Rows: SmolLM2-135M (heads of 64, θ 1e5) fine-tuned in full at 1024 tokens a step (`experiments/curves_1000.py`:
PI ×2 to 1000 steps, the YaRN ×2 and no-PI controls to 300; docs/results/curves1000/summary.json) and
Qwen2.5-Coder-1.5B-Instruct (heads of 128, θ 1e6) PI ×2 with LoRA at 1024 tokens a step
(`experiments/qwen_lora.py`; docs/results/qwen-lora/summary.json). Left: passkey accuracy at the longest length
each evaluated (SmolLM2 1024, Qwen 2048). Right: the copy heads' induction mass at +1 on repeated random tokens,
divided by the same figure of the model's own unextended original (1.0 = the original model), so that the two
models, whose originals sit at 0.33 and 0.91, share an axis.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
SOURCES = [("SmolLM2-135M", RESULTS / "curves1000" / "summary.json", ["pi_ft", "yarn_ft", "nopi_ft"]),
           ("Qwen2.5-Coder-1.5B", RESULTS / "qwen-lora" / "summary.json", None)]
"""(model, summary file, rows to draw; None: the file holds one run)."""
LABELS = {"pi_ft": "PI ×2, full fine-tune", "yarn_ft": "YaRN ×2, full fine-tune", "nopi_ft": "no PI, full fine-tune",
          "pi_lora": "PI ×2, LoRA r16 on q/k/v/o"}


def rows() -> list[dict]:
    """One dict per drawn line: label, tokens, passkey accuracy at the longest length, relative induction +1."""
    out = []
    for model, path, wanted in SOURCES:
        summary = json.loads(path.read_text())
        ref = summary["reference_heads"]["induction_1"]
        runs = [r for r in summary["rows"] if r["row"] in wanted] if wanted else [summary["run"]]
        for run in runs:
            pts = run["points"]
            longest = max((n for p in pts for n in p["passkey"]), key=int)
            out.append({"label": f"{model}: {LABELS.get(run['row'], run['row'])}", "length": longest,
                        "tokens": [p["tokens"] for p in pts], "passkey": [p["passkey"].get(longest) for p in pts],
                        "induction": [(p["heads"] or {}).get("induction_1", float("nan")) / ref for p in pts]})
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {"PI ×2, full": ("C0", "-", "o"), "YaRN": ("C1", "--", "s"), "no PI": ("C2", ":", "^"),
              "LoRA": ("C3", "-", "D")}
    for r in rows():
        color, ls, marker = next(v for k, v in styles.items() if k in r["label"])
        kw = {"color": color, "ls": ls, "marker": marker, "ms": 4}
        left.plot(r["tokens"], r["passkey"], label=f"{r['label']} (at {r['length']})", **kw)
        right.plot(r["tokens"], r["induction"], label=r["label"], **kw)
    left.set(title="passkey accuracy at the longest evaluated length", xlabel="training tokens", ylim=(-0.05, 1.05))
    right.axhline(1.0, color="0.4", ls=":", lw=1)
    right.set(title="induction mass at +1, relative to the unextended original", xlabel="training tokens")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle("PI ×2 on two real models, 1024 tokens a step, 2 CPU cores (bf16)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / "two-models.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    print(path)


if __name__ == "__main__":
    main()
