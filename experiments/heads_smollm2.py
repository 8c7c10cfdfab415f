"""Where SmolLM2's heads attend under none / PI ×2 / YaRN ×2 (0 steps) and after a PI ×2 fine-tune (issue 13).

    flock /tmp/posinterp-cpu.lock .venv/bin/python experiments/heads_smollm2.py --ft /work/exp/pi2-ft20

The fine-tuned checkpoint was made with
    flock /tmp/posinterp-cpu.lock .venv/bin/posinterp train smollm2-135m --rope pi:2 --seq-len 2048 --steps 20 \
        --lr 1e-4 --precision bf16 --out /work/exp/pi2-ft20 --data gutenberg

Each row is one `posinterp theory heads` run (probes of 2048 tokens, 3 passkey prompts, bf16 unless named),
all following the previous-token and copy heads of the original model (`--reference none/heads.json`);
`none-fp32` repeats the original in fp32 to show the dtype matters little. Writes, under --out
(default docs/results/heads): one folder per row with heads.json and heads.png, then compare.png,
summary.json and summary.md (the table printed at the end). Rows already written are kept (--force reruns).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from posinterp.atomic import write_json, write_text
from posinterp.evals.common import md_table
from posinterp.theory import heads, heads_plots

ROOT = Path(__file__).resolve().parents[1]


def rows(ft: str | None) -> list[tuple[str, dict]]:
    """(name, flags of `theory heads`) in run order; the first is everyone's reference."""
    out = [("none", {"model": "smollm2-135m"}),
           ("none-fp32", {"model": "smollm2-135m", "dtype": "float32"}),
           ("pi2", {"model": "smollm2-135m", "rope": "pi:2"}),
           ("yarn2", {"model": "smollm2-135m", "rope": "yarn:2"})]
    if ft:
        out.append((f"ft {Path(ft).name}", {"model": ft}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ft", default=None, help="a PI ×2 fine-tuned checkpoint folder to measure too")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "heads")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--force", action="store_true", help="rerun rows whose heads.json exists")
    args = parser.parse_args(argv)

    results, seconds = [], {}
    reference = args.out / "none" / heads.HEADS_JSON
    for name, flags in rows(args.ft):
        folder = args.out / name.replace(" ", "-")
        path = folder / heads.HEADS_JSON
        if path.is_file() and not args.force:
            print(f"{name}: kept {path}")
            results.append((name, json.loads(path.read_text())))
            continue
        start = time.perf_counter()
        extra = {} if name == "none" else {"reference": reference}
        r = heads.heads(length=args.length, trials=args.trials, device="cpu", out=folder, force=True, **extra, **flags)
        seconds[name] = round(time.perf_counter() - start, 1)
        results.append((name, r))

    heads_plots.plot_compare(args.out / "compare.png", results)
    table = [heads.table_rows(r) for _, r in results]
    names = [name for name, _ in results]
    md = md_table(["figure (reference heads of `none`)"] + names,
                  [[label] + [t[i][1] for t in table] for i, (label, _) in enumerate(table[0])])
    md += "\n" + md_table(["row", "model", "rope", "dtype", "seconds (theory heads)"],
                          [[n, r["model"], r["rope"], r["config"]["dtype"], r["timings"]["total"]] for n, r in results])
    write_text(args.out / "summary.md", md)
    write_json(args.out / "summary.json", {
        "command": " ".join(["experiments/heads_smollm2.py"] + (argv if argv is not None else sys.argv[1:])),
        "rows": {n: {"model": r["model"], "rope": r["rope"], "dtype": r["config"]["dtype"], "summary": r["summary"],
                     "passkey": {k: v for k, v in r["probes"]["passkey"].items() if k != "trials"},
                     "seconds": r["timings"]} for n, r in results},
        "wall_seconds_this_call": seconds})
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
