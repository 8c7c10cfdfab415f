"""Attention candidates on this CPU, side by side in one process (issue 23 item 2).

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_attention.py \
        --lengths 2048,8192,16384 --out docs/results/bench/attention.json

For one layer of SmolLM2-135M's attention (9 query heads, 3 key/value heads, head dim 64), causal, batch 1,
at each length, forward and forward + backward:

- `sdpa`: `F.scaled_dot_product_attention` (today's path: the CPU flash kernel), in bf16 and in fp32;
- `flex`: `torch.compile`d `flex_attention` with a causal block mask (inductor's CPU template), bf16, up to
  `--flex-max` (forward only: torch 2.13 has no flex backward on CPU);
- `sdpa-compiled`: the SDPA call inside a `torch.compile`d function (lets inductor fuse around it);
- `math`: SDPA forced to its math backend (bf16 matmuls, the T×T scores materialised), up to `--math-max`.

Each candidate's output is checked against fp32 SDPA (max relative error of the output rows), and its
time is turned into a fraction of the roofline measured in the same process (`machine.matmul_tflops`,
bf16 and fp32 4096³ matmuls): causal attention is 2·2·T²·d·H / 2 FLOPs forward, and forward + backward
3.5× that (the backward ≈ 2.5× the forward). Compilation time is reported apart (the first call), the steady-state time is the best of
`--repeats`. A candidate that fails to compile or run is recorded with its error, not dropped.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from posinterp.errors import cause

HEADS, KV, DIM = 9, 3, 64


def flops(t: int, backward: bool) -> float:
    fwd = 2 * 2 * t * t * DIM * HEADS / 2
    return fwd * (3.5 if backward else 1.0)  # backward ≈ 2.5× forward


def inputs(t: int, dtype: torch.dtype, grad: bool) -> tuple:
    g = torch.Generator().manual_seed(t)
    q = torch.randn(1, HEADS, t, DIM, generator=g).to(dtype)
    k = torch.randn(1, KV, t, DIM, generator=g).to(dtype)
    v = torch.randn(1, KV, t, DIM, generator=g).to(dtype)
    return tuple(x.requires_grad_(grad) for x in (q, k, v))


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def math_sdpa(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        return sdpa(q, k, v)


def make_flex(t: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, B=None, H=None, Q_LEN=t, KV_LEN=t, device="cpu")
    compiled = torch.compile(flex_attention)
    return lambda q, k, v: compiled(q, k, v, block_mask=mask, enable_gqa=True)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(first call s, best of `repeats` s)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return first, best


def run_one(name: str, attn, t: int, dtype: torch.dtype, backward: bool, ref: torch.Tensor, repeats: int,
            peak: float) -> dict:
    q, k, v = inputs(t, dtype, backward)

    def call():
        out = attn(q, k, v)
        if backward:
            out.float().sum().backward()
        return out

    row = {"candidate": name, "tokens": t, "dtype": str(dtype).replace("torch.", ""), "backward": backward}
    try:
        with torch.set_grad_enabled(backward), (torch.inference_mode() if not backward else torch.enable_grad()):
            first, best = timed(call, repeats)
            out = attn(q, k, v).float()
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        tf = flops(t, backward) / best / 1e12
        row.update(first_call_s=round(first, 4), seconds=round(best, 4), tflops=round(tf, 4),
                   roofline_fraction=round(tf / peak, 3), max_rel_error=err)
    except Exception as exc:  # a candidate that cannot run here is a result too
        row.update(error=cause(exc, "")[:300])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="2048,8192,16384")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--math-max", type=int, default=8192, help="the math backend only up to this length (memory)")
    ap.add_argument("--flex-max", type=int, default=8192,
                    help="flex only up to this length (at 16384 it was killed for memory here: 21 GB resident)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from posinterp.atomic import write_json
    from posinterp.machine import cpu_key, matmul_tflops, set_threads

    set_threads()
    peak = {"bf16": matmul_tflops(torch.bfloat16), "fp32": matmul_tflops(torch.float32)}
    print(json.dumps({"roofline_tflops": peak}), flush=True)
    rows = []
    for t in (int(x) for x in a.lengths.split(",")):
        q, k, v = inputs(t, torch.float32, False)
        with torch.inference_mode():
            ref = sdpa(q, k, v).float()
        for backward in (False, True):
            rows.append(run_one("sdpa", sdpa, t, torch.float32, backward, ref, a.repeats, peak["fp32"]))
            rows.append(run_one("sdpa", sdpa, t, torch.bfloat16, backward, ref, a.repeats, peak["bf16"]))
            rows.append(run_one("sdpa-compiled", torch.compile(sdpa), t, torch.bfloat16, backward, ref, a.repeats,
                                peak["bf16"]))
            if t <= a.math_max:
                rows.append(run_one("math", math_sdpa, t, torch.bfloat16, backward, ref, a.repeats, peak["bf16"]))
            if t > a.flex_max:
                continue
            try:
                flex = make_flex(t)
            except Exception as exc:  # noqa: BLE001
                rows.append({"candidate": "flex", "tokens": t, "backward": backward, "error": repr(exc)[:300]})
                continue
            rows.append(run_one("flex", flex, t, torch.bfloat16, backward, ref, a.repeats, peak["bf16"]))
    result = {"command": "bench/bench_attention.py --lengths " + a.lengths, "machine": cpu_key(),
              "platform": platform.platform(), "torch": torch.__version__, "roofline_tflops": peak,
              "shape": {"heads": HEADS, "kv_heads": KV, "head_dim": DIM}, "rows": rows}
    if a.out:
        write_json(a.out, result)  # atomic: a temporary sibling, then a rename


if __name__ == "__main__":
    main()
