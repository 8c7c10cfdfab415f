"""Issue 21 items 4–5: SmolLM2 fine-tuned to the paper's 1000 steps on 2 CPU cores, with the heads figures
along the curve. Does fine-tuning re-learn what PI shifts?

    R=/work/runs/curves1000      # outside the work tree: a later session on this machine resumes from it
    # 1. the original model's previous-token and copy heads (followed along every row's curve)
    .venv/bin/python experiments/curves_1000.py reference --runs $R
    # 2. the queue, in the background; every segment continues its row's run (`train --resume`), so a
    #    killed queue (a session's end) picks up at the last checkpoint when started again. Hours long: run
    #    it from a frozen copy of the code, so edits to the work tree cannot reach a segment mid-run
    mkdir -p $R/code && git archive HEAD | tar -x -C $R/code
    (cd $R/code && PYTHONPATH=$R/code nohup $PWD/.venv/bin/python experiments/curves_1000.py run --runs $R >> $R/queue.log 2>&1 &)
    # 3. the summary (JSON, README table, curves.png); re-runnable on partial data
    .venv/bin/python experiments/curves_1000.py summarize --runs $R --out docs/results/curves1000

Every row trains SmolLM2-135M on `mix` (Gutenberg training books + Python source + Python docs) in
packed sequences of 1024 tokens, one per step, seed 0 (the same data order for every row), lr warmed up
over 20 steps then constant, `--precision auto` (bf16 autocast where the probe finds bf16 fast). The
sequences are much shorter than the extended window (16384): the heads in question (previous-token and
copy heads) are local, and 1024 tokens fit 1000 steps into hours of 2 cores. Rows differ only in
`--rope` and `--lr`:

- pi_ft (PI ×2, lr 1e-4) to 1000 steps; yarn_ft (YaRN ×2) and nopi_ft (RoPE unchanged) to 300, the
  equal-budget controls;
- the learning-rate sweep: PI ×2 at 3e-5, 3e-4 and 1e-3 to 200 steps (pi_ft is the 1e-4 point).

The queue takes PI and YaRN to 300 (the equal-budget comparison), then PI on to 1000 (the paper's budget),
then the no-PI control to 300; the sweep comes last. Evaluated by `train --eval-every` on the model being trained (the
weights stay bit-equal to a run without it): passkey at 512 and 1024 tokens (10 trials each, the same keys
every time), perplexity on the first 8192 tokens of the held-out books (window 1024, stride 512), and the
heads figures of `theory heads` at 1024 tokens following the original model's heads (step 1).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runner import flags, machine, posinterp, sh  # experiments/runner.py, beside this script

MODEL = "smollm2-135m"
ROWS = {"pi_ft": ("pi:2", 1e-4), "yarn_ft": ("yarn:2", 1e-4), "nopi_ft": (None, 1e-4),
        "pi_lr3e-5": ("pi:2", 3e-5), "pi_lr3e-4": ("pi:2", 3e-4), "pi_lr1e-3": ("pi:2", 1e-3)}
"""Row → (--rope, --lr)."""
SWEEP_STEPS = 200
QUEUE = [("pi_ft", 300), ("yarn_ft", 300), ("pi_ft", 1000), ("nopi_ft", 300), ("pi_lr3e-5", 200),
         ("pi_lr3e-4", 200), ("pi_lr1e-3", 200)]
"""(row, step) segments in the order they run."""
TRAIN = {"data": "mix", "seq-len": 1024, "seed": 0, "warmup": 20, "schedule": "constant", "precision": "auto",
         "save-every": 50, "keep": 2, "tensorboard": "false"}
EVAL = {"eval-lengths": "512,1024", "eval-trials": 10, "eval-ppl-data": "gutenberg", "eval-ppl-tokens": 8192,
        "eval-heads-length": 1024}
EVAL_EVERY = {"pi_ft": 100, "yarn_ft": 100, "nopi_ft": 100}
"""--eval-every per row (the sweep rows: every 50)."""
REFERENCE = "reference-none"


def reference(runs: Path) -> Path:
    out = runs / REFERENCE
    if not (out / "heads.json").is_file():
        sh(posinterp("theory", "heads", MODEL, "--length", str(EVAL["eval-heads-length"]), "--data", "gutenberg",
                     "--split", "test", "--out", str(out)), runs / "commands.log")
    return out / "heads.json"


def done_steps(ckpt: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in ckpt.glob("step-*") if (p / "COMPLETE").is_file()]
    return max(steps, default=0)


def train_to(runs: Path, row: str, step: int) -> None:
    ckpt = runs / row / "checkpoints"
    if done_steps(ckpt) >= step:
        return
    rope, lr = ROWS[row]
    cmd = posinterp("train", MODEL, *(["--rope", rope] if rope else []), "--lr", str(lr), *flags(TRAIN),
                    "--steps", str(step), "--resume", "--checkpoint-dir", str(ckpt), "--out", str(runs / row / f"step-{step}"),
                    "--eval-every", str(EVAL_EVERY.get(row, 50)), *flags(EVAL),
                    "--eval-heads-reference", str(runs / REFERENCE / "heads.json"))
    wall = sh(cmd, runs / row / "commands.log")
    with open(runs / row / "segments.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, "wall_s": round(wall, 1), "finished": time.strftime("%FT%T"),
                             "command": " ".join(cmd)}) + "\n")


def run(runs: Path) -> None:
    reference(runs)
    for row, step in QUEUE:
        print(f"{time.strftime('%FT%T')} {row} → step {step}", flush=True)
        train_to(runs, row, step)
    print(f"{time.strftime('%FT%T')} queue done", flush=True)


# -- summary ---------------------------------------------------------------------------------------------------
def curve(runs: Path, row: str, spec: tuple | None = None) -> dict | None:
    """Row `row`'s evaluations along its run; `spec` is its (--rope, --lr), by default this script's ROWS."""
    metrics = runs / row / "checkpoints" / "metrics.jsonl"
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in rows if r.get("kind") == "eval"}  # a resumed segment may repeat a step
    settings = runs / row / "checkpoints"
    precision = None
    for seg in sorted(settings.glob("step-*/settings.json")):
        precision = json.loads(seg.read_text()).get("precision")
    rope, lr = spec or ROWS[row]
    points = []
    for step in sorted(evals):
        r = evals[step]
        pk = r["passkey"]
        points.append({"step": step, "tokens": r["tokens"], "passkey": pk,
                       "passkey_mean": sum(pk.values()) / len(pk) if pk else None, "ppl": r["ppl"],
                       "heads": r.get("heads"), "eval_s": r.get("eval_s")})
    train_rows = [r for r in rows if r.get("kind", "train") == "train"]
    return {"row": row, "rope": rope or "none", "lr": lr, "precision": precision, "points": points,
            "steps_done": max((r["step"] for r in train_rows), default=0),
            "mean_step_s": sum(r["step_s"] for r in train_rows) / len(train_rows) if train_rows else None}


def plot(curves: list[dict], path: Path, reference: dict | None = None,
         suptitle: str = "SmolLM2-135M fine-tuned on mix at 1024 tokens per step (2 CPU cores)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("passkey_mean", "passkey accuracy (512 and 1024 tokens)"),
              ("induction_1", "induction mass at +1 (copy heads, repeated tokens)"),
              ("previous_token_mass_1", "previous-token heads: mass at offset 1"),
              ("previous_token_mass_2", "previous-token heads: mass at offset 2"),
              ("repeat_loss", "loss on repeated random tokens"), ("ppl", "held-out perplexity (window 1024)")]
    fig, axes = plt.subplots(3, 2, figsize=(11, 11))
    markers = "os^Dvx"
    for i, c in enumerate(curves):
        for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
            xs, ys = [], []
            for p in c["points"]:
                v = p.get(key) if key in ("passkey_mean", "ppl") else (p["heads"] or {}).get(key)
                if v is not None:
                    xs.append(p["tokens"] * (1 + 0.01 * (i - len(curves) / 2)))  # rows at equal values stay visible
                    ys.append(v)
            ax.plot(xs, ys, marker=markers[i % len(markers)], ms=4, lw=1.2,
                    ls=("-", "--", ":", "-.")[i % 4], label=f"{c['row']} ({c['rope']}, lr {c['lr']:g})")
            ax.set(title=title, xlabel="training tokens")
    for ax, (key, _) in zip(axes.ravel(), panels, strict=True):
        if reference and reference.get(key) is not None:  # the original model (no PI, no training)
            ax.axhline(reference[key], color="0.4", ls=":", lw=1, label="original model, 0 steps")
    axes[0][0].legend(fontsize=7)
    axes[0][1].legend(fontsize=7)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def table(curves: list[dict], steps: tuple = (0, 100, 200, 300, 1000)) -> str:
    head = "| row | step | tokens | passkey 512 | passkey 1024 | ppl | prev-token mass @1 / @2 | induction +1 / +2 | copy +1 / +2 | repeat loss |"
    lines = [head, "|" + "---|" * 10]
    for c in curves:
        for p in c["points"]:
            if p["step"] not in steps:
                continue
            h = p["heads"] or {}

            def f(x, fmt=".3f"):
                return "—" if x is None else format(x, fmt)

            lines.append(f"| {c['row']} | {p['step']} | {p['tokens']} | {f(p['passkey'].get('512'), '.0%')} | "
                         f"{f(p['passkey'].get('1024'), '.0%')} | {f(p['ppl'], '.2f')} | "
                         f"{f(h.get('previous_token_mass_1'))} / {f(h.get('previous_token_mass_2'))} | "
                         f"{f(h.get('induction_1'))} / {f(h.get('induction_2'))} | "
                         f"{f(h.get('copy_1'))} / {f(h.get('copy_2'))} | {f(h.get('repeat_loss'))} |")
    return "\n".join(lines)


def summarize(runs: Path, out: Path) -> None:
    curves = [c for row in ROWS if (c := curve(runs, row)) is not None]
    out.mkdir(parents=True, exist_ok=True)
    ref = runs / REFERENCE / "heads.json"
    summary = {"command": "experiments/curves_1000.py summarize --runs RUNS --out " + str(out),
               "machine": machine(), "model": MODEL, "train": TRAIN, "eval": EVAL, "queue": QUEUE,
               "reference_heads": json.loads(ref.read_text())["figures"] if ref.is_file() else None,
               "rows": curves}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out / "summary.json")
    if curves:
        plot(curves, out / "curves.png", summary["reference_heads"])
        # the learning-rate sweep on its own scale: the PI rows to 200 steps
        sweep = [{**c, "points": [p for p in c["points"] if p["step"] <= SWEEP_STEPS]} for c in curves
                 if c["rope"] == "pi:2"]
        if len(sweep) > 1:
            plot(sweep, out / "lr-sweep.png", summary["reference_heads"],
                 suptitle=f"SmolLM2-135M, PI ×2: the learning-rate sweep to {SWEEP_STEPS} steps (1024 tokens per step)")
    (out / "table.md").write_text(table(curves) + "\n")
    print(table(curves))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("reference", "run", "summarize"))
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/results/curves1000"))
    a = ap.parse_args()
    a.runs.mkdir(parents=True, exist_ok=True)
    {"reference": lambda: reference(a.runs), "run": lambda: run(a.runs),
     "summarize": lambda: summarize(a.runs, a.out)}[a.what]()


if __name__ == "__main__":
    main()
