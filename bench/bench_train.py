"""Training throughput and peak memory: posinterp's `train` against a plain loop, SmolLM2 ×2 (PI).

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_train.py                 # 4096 and 16384
    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_train.py --lengths 4096 --steps 2

Phases, each in its own subprocess (so peak memory, the VmHWM of that process, is per phase, and
a baseline that does not fit cannot take the machine down: children run under an address-space
cap, --mem-cap-gb, and report an allocation failure instead of meeting the OOM killer):

- posinterp: `posinterp.train.train` itself (`--precision auto`: bf16 autocast over fp32 master weights where bf16 is fast, else fp32; chunked
  loss, activation checkpointing as its `auto` rule decides), on `smollm2-135m --rope pi:2`.
- posinterp, checkpointing on (at lengths where `auto` leaves it off): does checkpointing pay?
- baseline: a plain loop over the same packed Gutenberg sequences with the same optimizer
  settings: fp32 model, `model(input_ids, labels=input_ids).loss` (full fp32 logits), no
  activation checkpointing. Where that does not fit under the cap, the same loop with activation
  checkpointing is run as well (the least a plain loop needs), and the ratios use it.

Tokens/s is the mean over the steps after the first (the first alone when --steps 1). MFU is
model FLOPs per second over the machine's matmul roofline in the precision the phase ran in (bf16 or
fp32, each measured here by timing a 4096³ matmul; posinterp's phase runs in `--precision auto`); model FLOPs per token = 6·N (N = weights used in matmuls: every linear layer and the
output projection) + 6·layers·T·(heads·head_dim) for causal attention (recompute not counted).
Prints figures only; never passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL, ROPE = "smollm2-135m", "pi:2"


def _vmhwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _rate(step_s: list[float], tokens: int) -> float:
    timed = step_s[1:] if len(step_s) > 1 else step_s
    return tokens / (sum(timed) / len(timed))


# -- phases (run in children) ------------------------------------------------------------------------
def phase_posinterp(length: int, steps: int, checkpointing: str) -> dict:
    from posinterp.train.loop import train

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        out = train(MODEL, rope=ROPE, out=Path(tmp) / "out", seq_len=length, steps=steps, save_every=0,
                    tensorboard=False, checkpointing=checkpointing, warmup=0)
        rows = [json.loads(ln) for ln in (Path(tmp) / "out-checkpoints" / "metrics.jsonl").read_text().splitlines()]
        settings = json.loads((out / "settings.json").read_text())
    return {"step_s": [r["step_s"] for r in rows], "losses": [r["loss"] for r in rows],
            "tokens_per_s": _rate([r["step_s"] for r in rows], length),
            "peak_gb": max(r["peak_mem_gb"] for r in rows), "checkpointing": settings["activation_checkpointing"],
            "precision": settings["precision"], "attn": settings["attn"]}


def phase_baseline(length: int, steps: int, checkpointing: bool) -> dict:
    import torch

    from posinterp.data.packing import PackedSequences
    from posinterp.model import loader
    from posinterp.model.rope import parse_rope
    from posinterp.train.config import TrainConfig

    d = TrainConfig(MODEL, out=Path("unused"))  # the same optimizer settings as the real path
    model, tok, _ = loader.load(MODEL, rope=parse_rope(ROPE), dtype=torch.float32)
    model.train()
    model.config.use_cache = False
    if checkpointing:
        model.activation_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr, betas=(d.beta1, d.beta2), weight_decay=d.weight_decay)
    seqs = PackedSequences.from_corpus(d.data, tok, length, split=d.split, seed=d.seed).take(steps)
    step_s, losses = [], []
    for seq in seqs:
        t0 = time.perf_counter()
        ids = torch.from_numpy(seq[None].astype("int64"))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), d.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return {"step_s": step_s, "losses": losses, "tokens_per_s": _rate(step_s, length), "peak_gb": _vmhwm_gb(),
            "checkpointing": checkpointing, "precision": "fp32", "attn": "sdpa"}


def phase_peak() -> dict:
    """Matmul rooflines of this machine (same thread count as the phases): bf16, fp32, and the precision
    that `--precision auto` picks here (the one posinterp trains in)."""
    import torch

    from posinterp.machine import choose_precision, matmul_tflops, set_threads

    set_threads()
    choice = choose_precision("auto", "cpu")
    fp32 = matmul_tflops(torch.float32, n=4096, seconds=1.0) * 1e12
    bf16 = matmul_tflops(torch.bfloat16, n=4096, seconds=1.0) * 1e12 if choice.name == "bf16" else \
        choice.probe["bf16_tflops"] * 1e12  # the slow generic kernel: the probe's figure, not minutes of matmul
    return {"bf16_flops": bf16, "fp32_flops": fp32, "auto": choice.name, "auto_why": choice.reason,
            "threads": torch.get_num_threads()}


def model_flops_per_token(length: int) -> float:
    from posinterp.model import facts, refs

    config = facts.load_config(refs.dense(refs.resolve(MODEL)))
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads, kv, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * inter  # q, k+v, o, gate/up/down
    n = layers * per_layer + config.vocab_size * h  # + output projection
    return 6 * n + 6 * layers * length * heads * hd


# -- orchestration -----------------------------------------------------------------------------------
def run_child(args: list[str], cap_gb: float, timeout: float) -> dict:
    def limit() -> None:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True,
                          preexec_fn=limit, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-400:]
        oom = any(s in tail for s in ("can't allocate memory", "out of memory", "MemoryError", "std::bad_alloc"))
        return {"failed": "out of memory under the cap" if oom else f"exit {proc.returncode}", "tail": tail,
                "wall_s": wall}
    # load average > threads means other work shared the cores during this phase
    return {**json.loads(lines[-1]), "wall_s": wall, "load": (load_before, os.getloadavg()[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="4096,16384", help="sequence lengths (tokens)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per phase below 16384 tokens")
    parser.add_argument("--long-steps", type=int, default=1, help="steps per phase at 16384 tokens and more "
                                                                  "(one step there takes minutes on 2 cores)")
    parser.add_argument("--mem-cap-gb", type=float, default=None,
                        help="address-space cap per phase (default: 85%% of MemAvailable)")
    parser.add_argument("--phase", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        kind, *rest = args.phase
        if kind == "peak":
            result = phase_peak()
        elif kind == "posinterp":
            result = phase_posinterp(int(rest[0]), int(rest[1]), rest[2])
        else:
            result = phase_baseline(int(rest[0]), int(rest[1]), rest[2] == "on")
        print(json.dumps(result))
        return

    import platform

    import torch

    cap = args.mem_cap_gb or round(0.85 * _mem_available_gb(), 1)
    t_start = time.perf_counter()
    peak = run_child(["peak"], cap, 600)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {peak['threads']} threads; matmul roofline bf16 {peak['bf16_flops'] / 1e9:.0f}, "
          f"fp32 {peak['fp32_flops'] / 1e9:.0f} GFLOP/s; precision auto = {peak['auto']} ({peak['auto_why']}); "
          f"phase memory cap {cap} GB (MemAvailable {_mem_available_gb():.1f} GB)", flush=True)
    results = []
    for length in [int(x) for x in args.lengths.split(",")]:
        steps = args.long_steps if length >= 16384 else args.steps
        flops = model_flops_per_token(length)
        phases = [("posinterp", ["posinterp", str(length), str(steps), "auto"])]
        if length < 16384:
            phases.append(("posinterp, checkpointing on", ["posinterp", str(length), str(steps), "on"]))
        phases.append(("baseline", ["baseline", str(length), str(steps), "off"]))
        rows = {}
        for name, child in phases:
            r = run_child(child, cap, 7200)
            rows[name] = r
            if "failed" in r and name == "baseline":
                print(f"  {length}: baseline {r['failed']} ({cap} GB); running it with activation checkpointing",
                      flush=True)
                rows["baseline failed"] = r
                name = "baseline, checkpointing on"
                r = rows[name] = run_child(["baseline", str(length), str(steps), "on"], cap, 7200)
                del rows["baseline"]
            _print_row(length, name, r, flops, peak)
        base_name = "baseline" if "baseline" in rows else "baseline, checkpointing on"
        real, base = rows["posinterp"], rows.get(base_name, {})
        summary = {"length": length, "steps": steps, "rows": rows, "flops_per_token": flops}
        if "failed" not in real and "failed" not in base:
            speed, mem = real["tokens_per_s"] / base["tokens_per_s"], real["peak_gb"] / base["peak_gb"]
            summary.update(speed_ratio=speed, memory_ratio=mem)
            print(f"  {length}: posinterp vs {base_name}: {speed:.2f}× tokens/s, {mem:.2f}× peak memory", flush=True)
        if "baseline failed" in rows and "failed" not in real:
            print(f"  {length}: the plain loop without checkpointing did not fit in {cap} GB; posinterp peaked at "
                  f"{real['peak_gb']:.1f} GB (≤ {real['peak_gb'] / cap:.2f}× of what the plain loop needs)", flush=True)
        results.append(summary)
    total = time.perf_counter() - t_start
    print(f"total {total / 60:.1f} min", flush=True)
    print("json: " + json.dumps({"peak": peak, "cap_gb": cap, "results": results, "total_s": total}))


def _print_row(length: int, name: str, r: dict, flops: float, peak: dict) -> None:
    """MFU is against the matmul roofline of the precision the phase ran in (bf16 or fp32)."""
    if "failed" in r:
        print(f"  {length:6d}  {name:28s}  {r['failed']}  ({r['wall_s']:.0f} s)", flush=True)
        return
    roof = peak["bf16_flops"] if r["precision"] == "bf16" else peak["fp32_flops"]
    mfu = r["tokens_per_s"] * flops / roof
    r["mfu"], r["roofline_flops"] = mfu, roof
    steps = ", ".join(f"{s:.1f}" for s in r["step_s"])
    print(f"  {length:6d}  {name:28s}  {r['tokens_per_s']:7.1f} tok/s  peak {r['peak_gb']:5.2f} GB  MFU {mfu:5.1%}  "
          f"({r['precision']})  steps [{steps}] s  loss {r['losses'][-1]:.3f}  ckpt {'on' if r['checkpointing'] else 'off'}  "
          f"({r['wall_s']:.0f} s, load {r['load'][0]:.1f}→{r['load'][1]:.1f})", flush=True)


if __name__ == "__main__":
    main()
