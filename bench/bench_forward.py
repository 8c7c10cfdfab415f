"""Evaluation forward candidates on SmolLM2, side by side on the same windows in one process (issue 23 item 2).

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_forward.py --out docs/results/bench/forward.json
    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_forward.py --lengths 2048 --candidates plain,fast

Windows: one document of `--data` (default pydoc, the issue's text) cut into `--windows-per-length`
(2048: 8, 8192: 2) non-overlapping windows of W tokens (stride W − 1), every token after the first
scored, as `eval ppl --windows W --stride W-1` does. Every candidate scores the same windows:

| candidate        | what                                                                                |
| ---------------- | ----------------------------------------------------------------------------------- |
| reference        | fp32 weights, full logits, log-softmax over all of them (`perplexity.reference`)   |
| plain            | the same loop on bf16 weights: what a user writes with transformers (the baseline) |
| fast             | today's `eval ppl`: bf16 body (SDPA), fp32 head + log-softmax on scored rows only  |
| fast-bf16head    | the same with the head's matmul in bf16 (log-softmax still fp32)                   |
| math             | `fast` with SDPA forced to its math backend (bf16 matmuls, scores materialised)   |
| flex             | `fast` on `attn_implementation="flex_attention"` (inductor's CPU template)        |
| compiled         | `fast` with the body `torch.compile`d (inductor, default mode)                     |
| compiled-frozen  | the same with inductor's `freezing` (weights as constants, oneDNN prepacked)       |

For each it prints the steady seconds for all windows (every candidate first runs one window
untimed; that first call, compilation included, is reported apart as `first_s`), perplexity and its
relative difference from the fp32 reference, model TFLOP/s (body + causal attention + head on the
scored rows, the same count for every candidate) as a fraction of the bf16 matmul roofline measured
in the same run, and the speed-up over `plain`. It never passes or fails on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import forward_flops  # noqa: E402

from posinterp.errors import cause  # noqa: E402

CANDIDATES = ("reference", "plain", "fast", "fast-bf16head", "math", "flex", "compiled", "compiled-frozen")
WINDOWS = {2048: 8, 8192: 2, 16384: 1}


def bf16_head_score(model, docs, window, stride):
    """`perplexity.score` with the head's matmul in the body's dtype; log-softmax in fp32."""
    import torch
    import torch.nn.functional as F

    from posinterp.evals import common
    from posinterp.evals.perplexity import windows

    body, weight = common.decoder(model), model.get_output_embeddings().weight
    totals = []
    with common.eval_mode(model):
        for ids in docs:
            nll, count = 0.0, 0
            for b, e, f in windows(len(ids), window, stride):
                x = torch.tensor([ids[b:e]], dtype=torch.long)
                h = body(input_ids=x, use_cache=False).last_hidden_state[0, f - 1 - b: e - 1 - b]
                logp = torch.log_softmax(F.linear(h, weight).float(), dim=-1)
                nll -= logp.gather(-1, x[0, f - b: e - b, None]).double().sum().item()
                count += e - f
            totals.append((nll, count))
    return totals


def build(name: str, dtype):
    """(model, scorer) for one candidate."""
    import torch

    from posinterp.evals import perplexity as pp
    from posinterp.model import loader

    attn = "flex_attention" if name == "flex" else "sdpa"
    model, _, _ = loader.load("smollm2-135m", dtype=dtype, attn_implementation=attn)
    if name in ("reference", "plain"):
        return model, pp.reference
    if name == "fast-bf16head":
        return model, bf16_head_score
    if name == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def math_score(m, docs, w, s):
            with sdpa_kernel([SDPBackend.MATH]):
                return pp.score(m, docs, w, s, progress=False)
        return model, math_score
    if name.startswith("compiled"):
        import torch._inductor.config as inductor

        inductor.freezing = name == "compiled-frozen"
        body = model.get_decoder()  # what `perplexity.score` calls; compiling its forward keeps the module in place
        body.forward = torch.compile(body.forward, dynamic=False)
    return model, lambda m, docs, w, s: pp.score(m, docs, w, s, progress=False)


def measure(name: str, length: int, ids: list[int], n_windows: int, peak: float) -> dict:
    import torch

    dtype = torch.float32 if name == "reference" else torch.bfloat16
    row = {"candidate": name, "tokens": length, "windows": n_windows, "dtype": str(dtype).removeprefix("torch.")}
    stride = length - 1
    doc = ids[: n_windows * stride + 1]
    try:
        t0 = time.perf_counter()
        model, scorer = build(name, dtype)
        row["load_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        scorer(model, [doc[: length]], length, stride)  # one window, untimed in `seconds`: warm-up, compilation
        row["first_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        (nll, n), = scorer(model, [doc], length, stride)
        seconds = time.perf_counter() - t0
        config = model.config
        flops = n_windows * (forward_flops(config, length) + 2 * (length - 1) * config.vocab_size * config.hidden_size)
        tf = flops / seconds / 1e12
        row.update(seconds=round(seconds, 3), scored=n, perplexity=math.exp(nll / n), tflops=round(tf, 4),
                   roofline_fraction=round(tf / peak, 4))
    except Exception as exc:  # noqa: BLE001 - a candidate that cannot run here is a result too
        row["error"] = cause(exc, "")[:300]
    finally:
        model = scorer = None
        gc.collect()
        torch._dynamo.reset()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--data", default="pydoc")
    ap.add_argument("--split", default="test")
    ap.add_argument("--math-max", type=int, default=8192, help="skip the math backend above this length (memory)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import torch

    from posinterp.atomic import write_json
    from posinterp.data.corpus import load_documents
    from posinterp.machine import cpu_key, matmul_tflops, set_threads
    from posinterp.model import refs

    set_threads()
    ref = refs.resolve("smollm2-135m")
    tok = refs.load_tokenizer(ref)
    import transformers

    lengths = [int(x) for x in a.lengths.split(",")]
    names = [c for c in a.candidates.split(",") if c]
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise SystemExit(f"unknown candidates {sorted(unknown)}; choose from {', '.join(CANDIDATES)}")
    need = max(WINDOWS.get(w, 1) * (w - 1) + 1 for w in lengths)
    ids = next((x for x in (tok(d.text)["input_ids"] for d in load_documents(a.data, split=a.split)) if len(x) >= need),
               None)
    if ids is None:
        raise SystemExit(f"no document of {a.data}:{a.split} has {need} tokens")
    peak = matmul_tflops(torch.bfloat16, n=2048, seconds=0.5)
    print(json.dumps({"roofline_bf16_tflops": round(peak, 4), "cpu": cpu_key()}), flush=True)
    rows = []
    for length in lengths:
        for name in names:
            if name == "math" and length > a.math_max:
                continue
            row = measure(name, length, ids, WINDOWS.get(length, 1), peak)
            rows.append(row)
            print(json.dumps(row), flush=True)
        got = {r["candidate"]: r for r in rows if r["tokens"] == length and "seconds" in r}
        ref_ppl = got.get("reference", {}).get("perplexity")
        base = got.get("plain", {}).get("seconds")
        print(f"\n| {length} | seconds | first call s | ppl | rel. diff vs fp32 | TFLOP/s | of roofline | × plain |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in got.items():
            rel = abs(r["perplexity"] - ref_ppl) / ref_ppl if ref_ppl else float("nan")
            r["rel_diff_vs_reference"] = rel
            r["speedup_vs_plain"] = base / r["seconds"] if base else None
            print(f"| {name} | {r['seconds']:.2f} | {r['first_s']:.1f} | {r['perplexity']:.4f} | {rel:.1e} | "
                  f"{r['tflops']:.3f} | {r['roofline_fraction']:.0%} | "
                  f"{(base / r['seconds']) if base else float('nan'):.2f} |", flush=True)
        for r in rows:
            if r["tokens"] == length and "error" in r:
                print(f"| {r['candidate']} | error: {r['error']} |")
    if a.out:
        result = {"command": "bench/bench_forward.py " + " ".join(sys.argv[1:]), "cpu": cpu_key(),
                  "platform": platform.platform(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "roofline_bf16_tflops": peak,
                  "data": f"{a.data}:{a.split}", "rows": rows}
        write_json(a.out, result)  # atomic: a temporary sibling, then a rename


if __name__ == "__main__":
    main()
