"""Issue 29: PI past ×2 on SmolLM2 (8192 → 32768 and beyond), with the settings of the ×2 curve
(experiments/curves_1000.py): how many optimizer steps does each factor need, does YaRN need any, does
PoSE's skipped position ids reach the whole window, and does recovery follow steps or tokens?

    R=/work/runs/factors         # outside the work tree: a later session on this machine resumes from it
    mkdir -p $R/code && git archive HEAD | tar -x -C $R/code     # a frozen copy: edits cannot reach a segment
    (cd $R/code && PYTHONPATH=$R/code nohup $PWD/.venv/bin/python experiments/curves_factors.py run --runs $R >> $R/queue.log 2>&1 &)
    .venv/bin/python experiments/curves_factors.py summarize --runs $R --out docs/results/factors   # re-runnable on partial data

Every row trains SmolLM2-135M on `mix` in packed sequences of 1024 tokens, seed 0 (the same data order
for every row), lr 1e-4 warmed up over 20 steps then constant, `--precision auto` (fp32 on an AVX2-only
CPU, bf16 where the probe finds it fast: the summary records which). Evaluated every 100 steps by
`train --eval-every` (weights bit-equal to a run without it): passkey at 512 and 1024 tokens (10 keys,
the same every time), perplexity on the first 8192 tokens of the held-out books (window 1024), and the
heads figures of `theory heads` at 1024 tokens, following the original model's heads. Under PI ×s the
previous-token heads' offset-1 rotation lands at offset s: the heads figures record the mass at
offsets 1, 2, 4, 8 and 16 so the curve shows where they peak and whether they come back.

The queue, in the issue's order: PI ×4 and its YaRN ×4 control to 300 (equal budget), PI ×4 on to 1000;
PoSE ×4 to 1000; PI ×8 and ×16 to 500; PI ×2 with 4 sequences per optimizer step to 200 (steps or tokens?).
Each segment continues its row's run (`train --resume`), so a killed queue resumes at the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from curves_1000 import EVAL, MODEL, REFERENCE, TRAIN, curve, done_steps, reference
from runner import flags, machine, posinterp, sh  # experiments/, beside this script

ROWS = {
    "pi4_ft": ("pi:4", 1e-4, {}),
    "yarn4_ft": ("yarn:4", 1e-4, {}),
    "pose4_ft": ("pi:4", 1e-4, {"positions": "pose"}),
    "pi8_ft": ("pi:8", 1e-4, {}),
    "pi16_ft": ("pi:16", 1e-4, {}),
    "pi2_accum4": ("pi:2", 1e-4, {"grad-accum": 4}),
}
"""Row → (--rope, --lr, further train flags)."""
QUEUE = [("pi4_ft", 300), ("yarn4_ft", 300), ("pi4_ft", 1000), ("pose4_ft", 1000), ("pi8_ft", 500),
         ("pi16_ft", 500), ("pi2_accum4", 200)]
"""(row, step) segments in the order they run."""
EVAL_EVERY = {"pi2_accum4": 50}
"""--eval-every per row (default 100)."""
CURVE_X2 = Path(__file__).resolve().parent.parent / "docs/results/curves1000/summary.json"
"""The committed ×2 curve (1 × 1024 tokens a step), the first line of every factor plot."""


def train_to(runs: Path, row: str, step: int) -> None:
    ckpt = runs / row / "checkpoints"
    if done_steps(ckpt) >= step:
        return
    rope, lr, extra = ROWS[row]
    cmd = posinterp("train", MODEL, "--rope", rope, "--lr", str(lr), *flags(TRAIN), *flags(extra),
                    "--steps", str(step), "--resume", "--checkpoint-dir", str(ckpt), "--out", str(runs / row / f"step-{step}"),
                    "--eval-every", str(EVAL_EVERY.get(row, 100)), *flags(EVAL),
                    "--eval-heads-reference", str(runs / REFERENCE / "heads.json"))
    wall = sh(cmd, runs / row / "commands.log")
    with open(runs / row / "segments.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, "wall_s": round(wall, 1), "finished": time.strftime("%FT%T"),
                             "command": " ".join(cmd)}) + "\n")


def run(runs: Path, only: list[str] | None) -> None:
    reference(runs)
    for row, step in QUEUE:
        if only and row not in only:
            continue
        print(f"{time.strftime('%FT%T')} {row} → step {step}", flush=True)
        train_to(runs, row, step)
    print(f"{time.strftime('%FT%T')} queue done", flush=True)


def first_step(c: dict, level: float) -> int | None:
    """The first evaluated step whose passkey accuracy is at least `level` at every length (512 and 1024)."""
    return next((p["step"] for p in c["points"] if p["passkey"] and min(p["passkey"].values()) >= level), None)


def table(curves: list[dict]) -> str:
    lines = ["| row | rope | steps done | s / step | first 80% | first 100% | passkey 512 / 1024 by step (ppl) |",
             "|---|---|---|---|---|---|---|"]
    for c in curves:
        pts = "; ".join(f"{p['step']}: {p['passkey'].get('512', 0):.0%} / {p['passkey'].get('1024', 0):.0%} "
                        f"({p['ppl']:.1f})" for p in c["points"])
        lines.append(f"| {c['row']} | {c['rope']} | {c['steps_done']} | "
                     f"{c['mean_step_s'] or 0:.1f} | {first_step(c, 0.8) if first_step(c, 0.8) is not None else 'not yet'} | "
                     f"{first_step(c, 1.0) if first_step(c, 1.0) is not None else 'not yet'} | {pts} |")
    return "\n".join(lines)


def factor(c: dict) -> int:
    return int(str(c["rope"]).split(":")[1]) if ":" in str(c["rope"]) else 1


def at_offset(p: dict, s: int) -> float | None:
    """The followed previous-token heads' mean mass at offset s (the profile; ×2's committed curve has mass_2)."""
    h = p.get("heads") or {}
    prof = h.get("previous_token_profile")
    if prof is not None and s < len(prof) - 2:
        return prof[s]
    return h.get(f"previous_token_mass_{s}")


def peak(p: dict) -> int | None:
    """Where the followed previous-token heads' mean profile peaks (offsets 1..K; 0 is the token itself)."""
    prof = (p.get("heads") or {}).get("previous_token_profile")
    if not prof:
        return None
    body = prof[1:-2]  # offsets 1..K (the last two buckets: the first key and the rest)
    return 1 + max(range(len(body)), key=body.__getitem__)


def plot_steps(curves: list[dict], path: Path, reference: dict | None) -> None:
    """Against optimizer steps, one line per row: passkey, induction +1, the previous-token heads' mass at
    offset 1 and at offset s (the factor), where their mean profile peaks, and perplexity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("passkey accuracy (512 and 1024 tokens, 10 keys each)", lambda c, p: p["passkey_mean"]),
              ("induction mass at +1 (copy heads, repeated tokens)", lambda c, p: (p["heads"] or {}).get("induction_1")),
              ("previous-token heads: mass at offset 1", lambda c, p: at_offset(p, 1)),
              ("previous-token heads: mass at offset s (the factor)", lambda c, p: at_offset(p, factor(c))),
              ("previous-token heads: peak of their mean profile", lambda c, p: peak(p)),
              ("held-out perplexity (window 1024)", lambda c, p: p["ppl"])]
    refs = {0: None, 1: "induction_1", 2: "previous_token_mass_1"}
    fig, axes = plt.subplots(3, 2, figsize=(11, 11), sharex=True)
    for i, c in enumerate(curves):
        for ax, (title, get) in zip(axes.ravel(), panels, strict=True):
            pts = [(p["step"], v) for p in c["points"] if (v := get(c, p)) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="os^Dvx"[i % 6], ms=4, lw=1.2, ls=("-", "--", ":", "-.")[i % 4],
                        color=f"C{i}", label=f"{c['row']} ({c['rope']})")
            ax.set(title=title, xlabel="optimizer steps (1024 tokens each)")
    for k, (ax, _) in enumerate(zip(axes.ravel(), panels, strict=True)):
        key = refs.get(k)
        if reference and key and reference.get(key) is not None:
            ax.axhline(reference[key], color="0.4", ls=":", lw=1, label="original model, 0 steps")
    axes[2][0].axhline(1, color="0.4", ls=":", lw=1)  # the original model's previous-token heads peak at offset 1
    axes[2][0].set_yscale("log", base=2)
    axes[2][0].set_yticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
    axes[0][0].legend(fontsize=7)
    axes[0][1].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M: PI by factor (and YaRN ×4, PoSE ×4), fine-tuned on mix at 1024 tokens a step", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def summarize(runs: Path, out: Path) -> None:
    curves = [c for row, (rope, lr, extra) in ROWS.items() if (c := curve(runs, row, (rope, lr))) is not None]
    for c in curves:
        c["extra_flags"] = ROWS[c["row"]][2]
    x2 = json.loads(CURVE_X2.read_text()) if CURVE_X2.is_file() else None
    x2_pi = next((c for c in (x2 or {}).get("rows", []) if c["row"] == "pi_ft"), None)
    out.mkdir(parents=True, exist_ok=True)
    ref = runs / REFERENCE / "heads.json"
    summary = {"command": "experiments/curves_factors.py summarize --runs RUNS --out " + str(out),
               "machine": machine(), "model": MODEL, "train": TRAIN, "eval": EVAL, "queue": QUEUE,
               "reference_heads": json.loads(ref.read_text())["figures"] if ref.is_file() else None,
               "x2_from": str(CURVE_X2.relative_to(CURVE_X2.parents[3])), "rows": curves}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "summary.json")
    factors = ([{**x2_pi, "row": "pi_ft (×2, committed, bf16)"}] if x2_pi else []) + \
        [c for c in curves if c["row"].startswith(("pi4", "pi8", "pi16"))]
    if curves:
        plot_steps(factors + [c for c in curves if c["row"] in ("yarn4_ft", "pose4_ft")], out / "curves.png",
                   summary["reference_heads"])
    text = table(([{**x2_pi, "row": "pi_ft (×2, committed)"}] if x2_pi else []) + curves)
    (out / "table.md").write_text(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("reference", "run", "summarize"))
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="run these rows' segments only (default: the whole queue)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/factors"))
    a = ap.parse_args()
    a.runs.mkdir(parents=True, exist_ok=True)
    {"reference": lambda: reference(a.runs), "run": lambda: run(a.runs, a.only),
     "summarize": lambda: summarize(a.runs, a.out)}[a.what]()


if __name__ == "__main__":
    main()
