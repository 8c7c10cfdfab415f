"""Real-model curves on CPU (issue 13, item 3): SmolLM2-135M fine-tuned with PI ×2, YaRN ×2 and no PI at an
equal budget, passkey and held-out perplexity along the way.

    git -C /work/main worktree add /work/exp/tree 875b0a6     # a frozen snapshot of posinterp (HEAD then)
    cd /work/exp/tree && PYTHONPATH=/work/exp/tree OMP_NUM_THREADS=2 nice -n 19 /work/main/.venv/bin/python \
        /work/main/experiments/real_curves.py run --runs /work/exp/runs/curves --data gutenberg \
        --plan "pi_ft,yarn_ft,nopi_ft@0,10,25;pi_ft@50,100,150;yarn_ft,nopi_ft@50,100,150" \
        --out /work/main/docs/results/curves
    # mix rows: a second snapshot with the `mix` corpus (main's posinterp/corpus.py, sha1 776e3d24) copied in,
    # so the gutenberg rows never see a changed corpus.py; step 0 is shared with the gutenberg rows
    git -C /work/main worktree add /work/exp/tree-mix 875b0a6 && cp /work/main/posinterp/corpus.py /work/exp/tree-mix/posinterp/
    cd /work/exp/tree-mix && PYTHONPATH=/work/exp/tree-mix OMP_NUM_THREADS=2 nice -n 19 /work/main/.venv/bin/python \
        /work/main/experiments/real_curves.py run --runs /work/exp/runs/curves --data mix \
        --step0-from /work/exp/runs/curves --plan "pi_ft,yarn_ft@0,10,25,50,100,150" --out /work/main/docs/results/curves
    /work/main/.venv/bin/python /work/main/experiments/real_curves.py summarize \
        --runs /work/exp/runs/curves --out /work/main/docs/results/curves     # re-runnable on partial data

Every row trains the same way (data order, seed 0, lr 1e-4, seq_len 2048, constant schedule after the default
20 warmup steps, bf16 autocast) and differs only in `--rope`. The curve is built as segments of one run:
`posinterp train ... --steps K --resume --checkpoint-dir DIR --out DIR/step-K` for increasing K continues the
same run bit for bit (`steps`/`out` are not in train.IDENTITY; checked on SmolLM2 at seq 256: 4 steps in one
run and 2+2 steps give equal losses and bit-equal weights). `--plan` orders the work: groups of rows run in
turn, each breadth-first (every row of a group reaches step K before any goes past K), so an interrupted run
still leaves equal-budget comparisons. The plan above takes all rows to 25 steps, then PI (the open question)
to 150, then the controls to 150.

At every point: passkey at 2048 (10 trials) and 8192 (5 trials), keys fixed by (seed, length, trial), and
perplexity on the held-out Gutenberg books (first 4096 tokens of each, window 2048, stride 1024). Step 0 is
the model with the rope applied on the fly and no training (nopi: the original model).

`run` rewrites the summary (per-row JSON, summary.json, curves.png, README.md) in --out after every
evaluation; `summarize` rebuilds it from the run folders alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROWS = {"pi_ft": "pi:2", "yarn_ft": "yarn:2", "nopi_ft": None, "ntk_ft": "ntk:2"}
"""Row name → --rope given to `posinterp train` (None: RoPE unchanged, the direct fine-tune control)."""
MODEL = "smollm2-135m"
TRAIN = {"seq_len": 2048, "lr": 1e-4, "seed": 0, "precision": "bf16", "schedule": "constant", "warmup": 20}
"""Settings shared by every row (the rest are `posinterp train` defaults, recorded from its settings.json)."""
PASSKEY = ((2048, 10), (8192, 5))
"""(prompt length, trials) evaluated at every curve point."""
PPL = {"data": "gutenberg", "split": "test", "max_docs": 4, "max_tokens": 4096, "windows": 2048, "stride": 1024}
"""Held-out perplexity: the four test books, each cut to its first 4096 tokens."""
SAVE_EVERY = 25


def posinterp(*args: str) -> list[str]:
    return [sys.executable, "-m", "posinterp", *args]


def machine() -> dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "flags": sorted(f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8") if f in flags),
            "niceness": os.nice(0), "note": "CPU shared with other workers' jobs; this run at nice 19, so wall times "
                                            "and throughput include contention"}


def sh(cmd: list[str], log: Path) -> float:
    """Run a command with its output in `log`; returns wall seconds; raises on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


# -- one row ---------------------------------------------------------------------------------------------------
class Row:
    def __init__(self, runs: Path, name: str, data: str) -> None:
        self.name, self.data, self.rope = name, data, ROWS[name]
        self.dir = runs / f"{name}@{data}"
        self.log_file = self.dir / "commands.log"

    @property
    def ckpt(self) -> Path:
        return self.dir / "checkpoints"

    def model_at(self, step: int) -> Path | None:
        return None if step == 0 else self.dir / f"step-{step}"

    def train_to(self, step: int) -> None:
        out = self.model_at(step)
        if out is None or (out / "posinterp.json").is_file():
            return
        cmd = posinterp("train", MODEL, *(["--rope", self.rope] if self.rope else []), "--data", self.data,
                        "--seq-len", str(TRAIN["seq_len"]), "--lr", str(TRAIN["lr"]), "--seed", str(TRAIN["seed"]),
                        "--precision", TRAIN["precision"], "--schedule", TRAIN["schedule"],
                        "--warmup", str(TRAIN["warmup"]), "--steps", str(step), "--resume",
                        "--checkpoint-dir", str(self.ckpt), "--out", str(out), "--save-every", str(SAVE_EVERY),
                        "--tensorboard", "false", "--force")
        wall = sh(cmd, self.log_file)
        record(self.dir / "segments.jsonl", {"step": step, "wall_s": round(wall, 1), "command": " ".join(cmd)})

    def evaluate(self, step: int, step0: Path | None = None) -> None:
        """Evaluate the model at `step` into eval-<step>/ (step 0 of a row may reuse another row's step 0)."""
        folder = self.dir / f"eval-{step}"
        if step == 0 and step0 is not None and step0 != folder:
            if not folder.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                folder.symlink_to(os.path.relpath(step0, self.dir))
            return
        model = self.model_at(step)
        target = [str(model)] if model else [MODEL, *(["--rope", self.rope] if self.rope else [])]
        for length, trials in PASSKEY:
            out = folder / f"passkey-{length}"
            if not (out / "results.json").is_file():
                cmd = posinterp("eval", "passkey", *target, "--lengths", str(length), "--trials", str(trials),
                                "--dtype", "bfloat16", "--seed", "0", "--out", str(out), "--force")
                wall = sh(cmd, self.log_file)
                record(folder / "evals.jsonl", {"eval": out.name, "wall_s": round(wall, 1), "command": " ".join(cmd)})
        out = folder / "ppl"
        if not (out / "results.json").is_file():
            cmd = posinterp("eval", "ppl", *target, "--data", PPL["data"], "--split", PPL["split"],
                            "--max-docs", str(PPL["max_docs"]), "--max-tokens", str(PPL["max_tokens"]),
                            "--windows", str(PPL["windows"]), "--stride", str(PPL["stride"]),
                            "--dtype", "bfloat16", "--out", str(out), "--force")
            wall = sh(cmd, self.log_file)
            record(folder / "evals.jsonl", {"eval": out.name, "wall_s": round(wall, 1), "command": " ".join(cmd)})


def record(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- collecting results ------------------------------------------------------------------------------------------
def collect_row(row_dir: Path) -> dict:
    """Everything measured for one row, from its run folder."""
    name, data = row_dir.name.split("@")
    metrics = {m["step"]: m for m in read_jsonl(row_dir / "checkpoints" / "metrics.jsonl") if "error" not in m}
    segments = read_jsonl(row_dir / "segments.jsonl")
    settings_file = next(iter(sorted(row_dir.glob("step-*/settings.json"))), None)
    settings = json.loads(settings_file.read_text()) if settings_file else {}
    points = []
    for folder in sorted(row_dir.glob("eval-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(folder.name.split("-")[1])
        point: dict = {"step": step, "tokens": metrics[step]["tokens"] if step in metrics else (0 if step == 0 else None),
                       "train_s": round(sum(m["step_s"] for s, m in metrics.items() if s <= step), 1),
                       "shared_with": os.readlink(folder) if folder.is_symlink() else None}
        for length, _ in PASSKEY:
            res = folder / f"passkey-{length}" / "results.json"
            if res.is_file():
                r = json.loads(res.read_text())
                acc = next(a for a in r["summary"]["per_length"] if a["length"] == length)
                point[f"passkey_{length}"] = {
                    "accuracy": acc["accuracy"], "trials": acc["trials"],
                    "answers": [{"key": t["key"], "answer": t["answer"], "output": t["output"], "correct": t["correct"],
                                 "depth": t["depth"]} for t in r["trials"] if t["length"] == length],
                    "eval_s": r["timings"]["eval"], "rope": r["rope"], "window": r["window"]}
        res = folder / "ppl" / "results.json"
        if res.is_file():
            r = json.loads(res.read_text())
            w = r["windows"][0]
            point["ppl"] = {"perplexity": w["perplexity"], "window": w["window"], "stride": w["stride"],
                            "tokens_scored": w["tokens_scored"], "corpus": r["corpus"], "seconds": w["seconds"]}
        point["eval_commands"] = [e["command"] for e in read_jsonl(folder / "evals.jsonl")]
        points.append(point)
    steps = [metrics[s] for s in sorted(metrics)]
    rates = sorted(m["tokens_per_s"] for m in steps)
    return {
        "row": name, "data": data, "model": MODEL, "rope": ROWS[name] or "none (RoPE unchanged)",
        "train": {**TRAIN, "global_batch": settings.get("global_batch"), "tokens_per_step": settings.get("tokens_per_step"),
                  "data_description": settings.get("data_description"), "rope_parameters": settings.get("rope_parameters"),
                  "model_window": settings.get("model_window"), "versions": settings.get("versions")},
        "steps_done": max(metrics) if metrics else 0, "tokens_seen": steps[-1]["tokens"] if steps else 0,
        "train_wall_s": round(sum(m["step_s"] for m in steps), 1),
        "segments_wall_s": round(sum(s["wall_s"] for s in segments), 1),
        "tokens_per_s_median": rates[len(rates) // 2] if rates else None,
        "loss": [{"step": m["step"], "loss": round(m["loss"], 4), "tokens": m["tokens"], "lr": m["lr"],
                  "step_s": round(m["step_s"], 2)} for m in steps],
        "points": points, "train_commands": [s["command"] for s in segments],
    }


def summarize(runs: Path, out: Path) -> dict:
    from posinterp.atomic import write_json, write_text

    rows = [collect_row(d) for d in sorted(runs.glob("*@*")) if d.is_dir()]
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        write_json(out / f"{r['row']}@{r['data']}.json", r)
    recorded = runs / "machine.json"  # written by `run`: the environment the numbers were measured in
    summary = {"experiment": "issue 13 item 3: SmolLM2-135M real-model curves on CPU",
               "machine": json.loads(recorded.read_text()) if recorded.is_file() else machine(),
               "passkey": [{"length": n, "trials": t} for n, t in PASSKEY], "ppl": PPL, "train": TRAIN,
               "table": [{"row": r["row"], "data": r["data"], "step": p["step"], "tokens": p["tokens"],
                          **{f"passkey_{n}": p.get(f"passkey_{n}", {}).get("accuracy") for n, _ in PASSKEY},
                          "ppl": p.get("ppl", {}).get("perplexity")} for r in rows for p in r["points"]],
               "rows": {f"{r['row']}@{r['data']}": {"steps_done": r["steps_done"], "tokens_seen": r["tokens_seen"],
                                                    "train_wall_s": r["train_wall_s"],
                                                    "segments_wall_s": r["segments_wall_s"],
                                                    "tokens_per_s_median": r["tokens_per_s_median"]} for r in rows}}
    write_json(out / "summary.json", summary)
    plot(rows, out / "curves.png")
    write_text(out / "README.md", readme(summary, rows))
    return summary


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"passkey_{n}", f"passkey accuracy @ {n} ({t} trials)") for n, t in PASSKEY] + [("ppl", "held-out ppl")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, title) in zip(axes, panels):
        for r in rows:
            pts = [p for p in r["points"] if key in p and p["tokens"] is not None]
            ys = [p[key]["accuracy"] if key != "ppl" else p[key]["perplexity"] for p in pts]
            ax.plot([p["tokens"] for p in pts], ys, marker="o", linestyle="--" if r["data"] != "gutenberg" else "-",
                    label=f"{r['row']}@{r['data']}")
        ax.set_title(title)
        ax.set_xlabel("training tokens")
        if key != "ppl":
            ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{v:.0%}" if pct else f"{v:.2f}"


def readme(summary: dict, rows: list[dict]) -> str:
    m = summary["machine"]
    lines = ["# Real-model curves on CPU (issue 13, item 3)", "",
             "Generated by `experiments/real_curves.py summarize` from the JSON files in this folder; "
             "the command that made them heads that script.", "",
             f"SmolLM2-135M (alias `{MODEL}`, window 8192, θ 1e5, head dim 64); every row: seq_len "
             f"{TRAIN['seq_len']}, lr {TRAIN['lr']:g}, seed {TRAIN['seed']}, {TRAIN['schedule']} after "
             f"{TRAIN['warmup']} warmup steps, precision {TRAIN['precision']}, same data order. "
             f"Passkey: {', '.join(f'{n} tokens × {t} trials' for n, t in PASSKEY)} (keys fixed by seed, length and "
             f"trial; bf16). Perplexity: {PPL['data']}:{PPL['split']} ({PPL['max_docs']} books, first "
             f"{PPL['max_tokens']} tokens each), window {PPL['windows']}, stride {PPL['stride']}.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['flags'])}), OMP_NUM_THREADS "
             f"{m['omp_num_threads']}; {m['note']}.", "",
             "| row | step | tokens | " + " | ".join(f"passkey@{n}" for n, _ in PASSKEY) + " | ppl |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in PASSKEY) + " | ---: |"]
    for t in summary["table"]:
        lines.append(f"| {t['row']}@{t['data']} | {t['step']} | {t['tokens'] if t['tokens'] is not None else '–'} | "
                     + " | ".join(_fmt(t[f'passkey_{n}']) for n, _ in PASSKEY) + f" | {_fmt(t['ppl'], False)} |")
    lines += ["", "| row | steps done | tokens seen | train wall (s, sum of steps) | wall incl. load/save (s) | "
              "median tokens/s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in summary["rows"].items():
        lines.append(f"| {name} | {r['steps_done']} | {r['tokens_seen']} | {r['train_wall_s']} | "
                     f"{r['segments_wall_s']} | {_fmt(r['tokens_per_s_median'], False)} |")
    lines += ["", "Keys → the model's output (first line; the parsed answer is in the JSON, None when the output holds no "
              "5-digit number) at 2048, latest evaluated step of each row, first 5 trials:", ""]
    for r in rows:
        pts = [p for p in r["points"] if "passkey_2048" in p]
        if pts:
            p = pts[-1]
            pairs = ", ".join(f"{a['key']}→`{a['output'].strip().splitlines()[0] if a['output'].strip() else ''}`"
                              for a in p["passkey_2048"]["answers"][:5])
            lines.append(f"- {r['row']}@{r['data']} step {p['step']}: {pairs}")
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


# -- the schedule ----------------------------------------------------------------------------------------------
def parse_plan(text: str) -> list[tuple[list[str], list[int]]]:
    """"a,b@0,10;a@50" → [([a, b], [0, 10]), ([a], [50])]: groups run in order, each breadth-first."""
    plan = []
    for group in filter(None, (g.strip() for g in text.split(";"))):
        rows, _, points = group.partition("@")
        names = [n for n in rows.split(",") if n]
        bad = [n for n in names if n not in ROWS]
        if bad or not points:
            raise SystemExit(f"--plan {text!r}: group {group!r} needs rows from {', '.join(ROWS)} and @steps")
        plan.append((names, sorted(int(p) for p in points.split(","))))
    return plan


def run(args: argparse.Namespace) -> None:
    os.nice(max(0, 19 - os.nice(0)))  # the long job yields to everyone's short tests
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "machine.json").write_text(json.dumps(machine(), indent=1))
    step0 = Path(args.step0_from) if args.step0_from else None
    for names, points in parse_plan(args.plan):
        rows = [Row(runs, name, args.data) for name in names]
        for step in points:  # breadth-first within a group: every row reaches `step` before any goes further
            for row in rows:
                t0 = time.time()
                row.train_to(step)
                shared = (step0 / f"{row.name}@gutenberg" / "eval-0") if (step0 and step == 0) else None
                row.evaluate(step, shared)
                print(f"{time.strftime('%H:%M:%S')} {row.name}@{args.data} step {step}: {time.time() - t0:.0f} s",
                      flush=True)
                if args.out:
                    summarize(runs, Path(args.out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("run", help="train and evaluate, breadth-first over the curve points (resumable)")
    r.add_argument("--runs", required=True, help="folder for the run folders (<row>@<data>/)")
    r.add_argument("--data", default="gutenberg", help="training data of every row (gutenberg, mix)")
    r.add_argument("--plan", default="pi_ft,yarn_ft,nopi_ft@0,10,25,50,100,150",
                   help=f"groups 'rows@steps' separated by ';', run in order, each breadth-first (every row of a "
                        f"group reaches a step before any goes further); rows from {', '.join(ROWS)}")
    r.add_argument("--step0-from", default=None, help="runs folder whose <row>@gutenberg/eval-0 serves as step 0 "
                                                      "(the untrained model does not depend on the training data)")
    r.add_argument("--out", default=None, help="rewrite the summary here after every evaluation")
    s = sub.add_parser("summarize", help="per-row JSON, summary.json, curves.png and README.md from the run folders")
    s.add_argument("--runs", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args()
    if args.verb == "run":
        parse_plan(args.plan)
        run(args)
    else:
        summarize(Path(args.runs), Path(args.out))


if __name__ == "__main__":
    main()
