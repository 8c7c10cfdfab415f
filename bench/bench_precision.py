"""`auto` precision on this CPU and on the same CPU with oneDNN capped at AVX2 (an AVX2-only CPU's bf16 path).

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_precision.py --out docs/results/precision

An AVX2-only CPU has no bf16 instructions: torch's bf16 matmul falls back to a generic kernel about
two orders of magnitude slower than fp32. `ONEDNN_MAX_CPU_ISA=AVX2` (with `ATEN_CPU_CAPABILITY=avx2`)
makes this machine's torch take that same path, so the `auto` rule can be watched deciding both ways
on one machine. What it does not reproduce: an AVX2 machine's own fp32 speed (its FMA units, caches
and memory are what they are here), so fp32 figures under the cap are this CPU's, not an AVX2 CPU's.

For each environment (native, AVX2-capped) it runs, each in a fresh process:
- the probe (`posinterp.machine`: bf16 and fp32 matmul TFLOP/s, the choice and its reason);
- `posinterp eval ppl smollm2-135m --data pydoc --windows 1024` (what it picked, from results.json);
- `posinterp train smollm2-135m --seq-len 2048 --steps 2` with `--precision auto` and `--precision fp32`
  (tokens/s of step 2, from metrics.jsonl).
Prints a table and writes summary.json to --out; never passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENVS = {"native": {}, "avx2-capped": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
PROBE = ("import json; from posinterp import machine; p = machine.probe(refresh=True); "
         "c = machine.choose_precision('auto'); print(json.dumps({'probe': p, 'choice': c.name, 'reason': c.reason}))")


def _run(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc, time.perf_counter() - t0


def _posinterp(*args: str) -> list[str]:
    return [sys.executable, "-m", "posinterp", *args]


def measure(name: str, env: dict, tmp: Path, seq_len: int) -> dict:
    probe = json.loads(_run([sys.executable, "-c", PROBE], env)[0].stdout.strip().splitlines()[-1])
    _, ppl_s = _run(_posinterp("eval", "ppl", "smollm2-135m", "--data", "pydoc", "--windows", "1024",
                               "--out", str(tmp / f"{name}-ppl")), env)
    ppl = json.loads((tmp / f"{name}-ppl" / "results.json").read_text())
    out = {"env": env, "probe": probe, "ppl": {"precision": ppl.get("precision"), "seconds_wall": round(ppl_s, 1),
                                               "perplexity": ppl["windows"][0]["perplexity"]}}
    for precision in ("auto", "fp32"):
        folder = tmp / f"{name}-train-{precision}"
        _, wall = _run(_posinterp("train", "smollm2-135m", "--seq-len", str(seq_len), "--steps", "2",
                                  "--precision", precision, "--tensorboard", "false", "--out", str(folder),
                                  "--checkpoint-dir", str(tmp / f"{name}-ckpt-{precision}")), env)
        rows = [json.loads(line) for line in (tmp / f"{name}-ckpt-{precision}" / "metrics.jsonl").read_text()
                .splitlines() if line.strip()]
        steps = [r for r in rows if "tokens_per_s" in r]
        settings = json.loads((folder / "settings.json").read_text())
        out[f"train_{precision}"] = {"precision": settings["precision"], "why": settings["precision_why"],
                                     "tokens_per_s_last_step": round(steps[-1]["tokens_per_s"], 1),
                                     "step_s": [round(r["step_s"], 2) for r in steps], "seconds_wall": round(wall, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="folder for summary.json")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--envs", default=",".join(ENVS))
    args = p.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.envs.split(","):
            results[name] = measure(name, ENVS[name], Path(tmp), args.seq_len)
            r = results[name]
            pr = r["probe"]["probe"]
            print(f"{name:12} probe bf16 {pr['bf16_tflops']:.4f} / fp32 {pr['fp32_tflops']:.3f} TFLOP/s "
                  f"({pr['speedup']:.3g}×) → auto = {r['probe']['choice']}; eval ppl picked {r['ppl']['precision']} "
                  f"({r['ppl']['seconds_wall']} s wall); train auto → {r['train_auto']['precision']} "
                  f"{r['train_auto']['tokens_per_s_last_step']} tok/s, fp32 {r['train_fp32']['tokens_per_s_last_step']} "
                  f"tok/s", flush=True)
    summary = {"command": "bench/bench_precision.py " + " ".join(sys.argv[1:]), "machine": {
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}, "results": results}
    if args.out is not None:
        from posinterp.atomic import write_json

        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "summary.json", summary)
        print(f"wrote {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
