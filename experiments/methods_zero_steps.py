"""Issue 32 item 3: Llama 3's scaling beside none / PI / YaRN on SmolLM2 at ×2 and 0 fine-tune steps. Does it
keep the previous-token heads at offset 1, as YaRN does, or move them as PI does?

    .venv/bin/python experiments/methods_zero_steps.py run --runs /work/runs/methods0     # resumable: a finished cell is skipped
    .venv/bin/python experiments/methods_zero_steps.py summarize --runs /work/runs/methods0 --out docs/results/methods0

Every cell is one posinterp command on the embedded SmolLM2-135M with `--rope METHOD:2` applied on the fly:
- `eval passkey` at 2048 and 8192 (none, llama3, yarn) and 16384 (the extended window: llama3); PI
  at 2048 only (at 0 steps it retrieves nothing at any length, measured before), and plain RoPE to its window,
  5 trials per length, keys at depths spread over 0..1, the same keys for every method (seed 0);
- `eval ppl` on the held-out Gutenberg books (the first 8192 tokens, window 2048, stride 1024), and at the
  extended window (the first 16384 tokens, window 16384: one window scored whole) for the three extended methods;
- `theory heads` at 1024 tokens: where the previous-token heads look, and the copy heads' induction.
`--dtype auto`: fp32 on an AVX2-only CPU (bf16 where the probe finds it fast); the summary records it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runner import machine, posinterp, sh  # experiments/, beside this script

MODEL = "smollm2-135m"
METHODS = ["none", "llama3:2", "yarn:2", "pi:2"]
"""In the order they run: the new method first."""
PASSKEY = {"none": [2048, 8192], "llama3:2": [2048, 8192, 16384], "yarn:2": [2048, 8192], "pi:2": [2048]}
"""Lengths per method: none to its window; PI at 0 steps retrieves nothing at any length (measured before,
docs/results/curves1000 and the demo), so 2048 shows it here; YaRN ×2 at 16384 and 0 steps was measured on
an H200 (docs/demo-gpu: 40% of 10), so here it stops at 8192 to leave the 2-core session's time to llama3."""
TRIALS = 5
PPL = [("2048", 8192, 1024)] + [("16384", 16384, 8192)]
"""(window, tokens, stride)"""


def cells(runs: Path) -> list[tuple[Path, list[str]]]:
    out = []
    for m in METHODS:
        tag = m.replace(":", "")
        ref = [] if m == "none" else ["--reference", str(runs / "none" / "heads" / "heads.json")]  # follow the original's heads
        out.append((runs / tag / "heads", posinterp("theory", "heads", MODEL, "--rope", m, "--length", "1024",
                                                   "--data", "gutenberg", "--split", "test", *ref)))
        out.append((runs / tag / "ppl-2048", posinterp("eval", "ppl", MODEL, "--rope", m, "--data", "gutenberg",
                                                      "--split", "test", "--windows", "2048", "--stride", "1024",
                                                      "--max-tokens", "8192", "--max-docs", "1")))
        for n in PASSKEY[m]:
            out.append((runs / tag / f"passkey-{n}", posinterp("eval", "passkey", MODEL, "--rope", m, "--lengths",
                                                               str(n), "--trials", str(TRIALS))))
        if m != "none":
            out.append((runs / tag / "ppl-16384", posinterp("eval", "ppl", MODEL, "--rope", m, "--data", "gutenberg",
                                                           "--split", "test", "--windows", "16384", "--stride",
                                                           "8192", "--max-tokens", "16384", "--max-docs", "1")))
    return out


def run(runs: Path) -> None:
    for folder, cmd in cells(runs):
        if (folder / "results.json").is_file() or (folder / "heads.json").is_file():
            continue
        print(f"{time.strftime('%FT%T')} {folder.relative_to(runs)}", flush=True)
        wall = sh(cmd + ["--out", str(folder)], runs / "commands.log")
        (folder / "wall.json").write_text(json.dumps({"wall_s": round(wall, 1)}))


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(runs: Path, out: Path) -> None:
    rows = []
    for m in METHODS:
        tag = m.replace(":", "")
        heads = _read(runs / tag / "heads" / "heads.json")
        row = {"method": m, "passkey": {}, "ppl": {}, "wall_s": {}, "heads": heads["figures"] if heads else None}
        for n in PASSKEY[m]:
            r = _read(runs / tag / f"passkey-{n}" / "results.json")
            if r:
                (cell,) = [c for c in r["summary"]["per_length"] if int(c["length"]) == n]
                row["passkey"][str(n)] = {"accuracy": cell["accuracy"], "trials": cell["trials"],
                                          "by_depth": {str(d["depth"]): d["accuracy"] for d in r["summary"]["per_depth"]},
                                          "precision": r["precision"]["dtype"]}
                row["wall_s"][f"passkey-{n}"] = (_read(runs / tag / f"passkey-{n}" / "wall.json") or {}).get("wall_s")
        for w, _, _ in PPL:
            r = _read(runs / tag / f"ppl-{w}" / "results.json")
            if r:
                (cell,) = [c for c in r["windows"] if str(c["window"]) == w]
                row["ppl"][w] = cell["perplexity"]
                row["ppl_scored"] = {**row.get("ppl_scored", {}), w: cell["tokens_scored"]}
                row["wall_s"][f"ppl-{w}"] = (_read(runs / tag / f"ppl-{w}" / "wall.json") or {}).get("wall_s")
        rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "experiments/methods_zero_steps.py summarize --runs RUNS --out " + str(out),
               "machine": machine(), "model": MODEL, "trials": TRIALS, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")

    def f(x, fmt=".3f"):
        return "—" if x is None else format(x, fmt)

    lines = ["| method (×2, 0 steps) | passkey 2048 | passkey 8192 | passkey 16384 | ppl @2048 | ppl @16384 | "
             "prev-token mass @1 / @2 | prev-token heads' peaks | induction +1 / +2 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pk = [f"{r['passkey'][n]['accuracy']:.0%} of {r['passkey'][n]['trials']}" if n in r["passkey"] and
              r["passkey"][n]["accuracy"] is not None else "—" for n in ("2048", "8192", "16384")]
        h = r["heads"] or {}
        peaks = ", ".join(f"{k}: {v}" for k, v in (h.get("previous_token_peaks") or {}).items()) or "—"
        lines.append(f"| {r['method']} | {' | '.join(pk)} | {f(r['ppl'].get('2048'), '.2f')} | "
                     f"{f(r['ppl'].get('16384'), '.2f')} | {f(h.get('previous_token_mass_1'))} / "
                     f"{f(h.get('previous_token_mass_2'))} | {peaks} | {f(h.get('induction_1'))} / {f(h.get('induction_2'))} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("run", "summarize"))
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results/methods0"))
    a = ap.parse_args()
    a.runs.mkdir(parents=True, exist_ok=True)
    {"run": lambda: run(a.runs), "summarize": lambda: summarize(a.runs, a.out)}[a.what]()


if __name__ == "__main__":
    main()
