"""Benchmark the eval fast paths against a straightforward reference on SmolLM2 (CPU or GPU).

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_eval.py
    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_eval.py --lengths 8192 --prompts 3 --extra-strides 2
    python bench/bench_eval.py --device cuda --extra-strides 15 --prompts 4     # on a GPU: peak GPU memory too

For each length W it runs, each phase in a fresh subprocess (so the peak RSS, VmHWM, is the phase's own):

| phase      | what                                                                                  |
| ---------- | ------------------------------------------------------------------------------------- |
| ppl-ref    | fp32; full logits of every window, log-softmax over all of them (`perplexity.reference`) |
| ppl-fast   | the eval's path: bf16 body, fp32 head + log-softmax on the scored rows (`perplexity.score`) |
| ppl-fast32 | the eval's path in fp32, to check it equals ppl-ref (1e-3 relative); at `--check-at` lengths |
| pk-ref     | fp32; one `model.generate` per passkey prompt (greedy, KV cache, as a user would write it) |
| pk-fast    | the eval's path: bf16, shared filler prefix, greedy decode with a KV cache (`passkey.run_trials`) |

Sizing: one document of the test split truncated to W + `--extra-strides`·S tokens (so
1 + extra-strides windows), `--prompts` passkey prompts of exactly W tokens. It prints the seconds
(model load excluded), peak RSS and the reference/fast time ratio, never a pass/fail on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def forward_flops(config, tokens: int) -> float:
    """Matmul FLOPs of one forward over `tokens`: 2·N·T for the weights (every linear layer, not the
    unscored output head) plus causal attention's QKᵀ and AV, 2·T²·heads·head_dim per layer."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    per_layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 3 * h * config.intermediate_size
    return 2 * layers * per_layer * tokens + 2 * layers * tokens**2 * heads * hd


def document(args: argparse.Namespace, tokenizer, length: int) -> list[int]:
    from posinterp.data.corpus import load_documents

    need = length + args.extra_strides * args.stride
    for doc in load_documents(args.data, split=args.split):
        ids = list(tokenizer(doc.text)["input_ids"])
        if len(ids) >= need:
            return ids[:need]
    raise SystemExit(f"no document of {args.data}:{args.split} has {need} tokens; lower --extra-strides or --lengths")


def phase(args: argparse.Namespace) -> dict:
    """Run one phase in this process and return its figures."""
    import torch

    from posinterp.evals import passkey as pk
    from posinterp.evals import perplexity as pp
    from posinterp.machine import choose_precision, matmul_tflops, set_threads
    from posinterp.model import loader
    from posinterp.model.rope import parse_rope

    set_threads()
    fp32 = args.phase in ("ppl-ref", "ppl-fast32", "pk-ref")
    device = loader.pick_device(args.device)
    cuda = device.startswith("cuda")
    dtype = torch.float32 if fp32 else choose_precision("auto", device).torch_dtype  # the eval's own default
    model, tokenizer, _ = loader.load(args.model, rope=parse_rope(args.rope), dtype=dtype, device=device)
    with torch.inference_mode():  # warm-up (kernel selection, first-call allocations), untimed, for every phase
        model(input_ids=torch.ones(1, 64, dtype=torch.long, device=device), use_cache=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    length = args.length
    out: dict = {"phase": args.phase, "length": length, "dtype": str(dtype).removeprefix("torch.")}
    if args.phase.startswith("ppl"):
        docs = [document(args, tokenizer, length)]
        start = time.perf_counter()  # the scores are read back with .item(): the GPU has finished at the end
        if args.phase == "ppl-ref":
            totals = pp.reference(model, docs, length, args.stride)
        else:
            totals = pp.score(model, docs, length, args.stride, progress=False)
        out["seconds"] = time.perf_counter() - start
        nll, n = totals[0]
        spans = pp.windows(len(docs[0]), length, args.stride)
        out.update(nll=nll, tokens=n, windows=len(spans), perplexity=float(torch.tensor(nll / n).exp()))
        # fraction of this machine's matmul roofline in the phase's dtype (forward FLOPs of every window)
        flops = sum(forward_flops(model.config, e - b) for b, e, _ in spans)
        roof = matmul_tflops(dtype, n=2048, seconds=0.5, device=device) * 1e12
        out.update(tflops=flops / out["seconds"] / 1e12, roofline_tflops=roof / 1e12,
                   roofline_fraction=flops / out["seconds"] / roof)
    else:
        builder = pk.PromptBuilder(tokenizer)
        trials = pk.build_trials(builder, [length], args.prompts, 0, args.seed)
        start = time.perf_counter()
        if args.phase == "pk-ref":
            answers = []
            with torch.inference_mode():
                for t in trials:
                    ids = torch.tensor([t.ids], device=device)
                    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                         do_sample=False, pad_token_id=tokenizer.eos_token_id)
                    answers.append(pk.parse_answer(tokenizer.decode(gen[0, len(t.ids):], skip_special_tokens=True)))
        else:
            records = pk.run_trials(model, tokenizer, trials, max_new_tokens=args.max_new_tokens, progress=False)
            answers = [r["answer"] for r in records]
        out["seconds"] = time.perf_counter() - start
        out.update(prompts=len(trials), keys=[t.key for t in trials], answers=answers,
                   correct=sum(a == t.key for a, t in zip(answers, trials)))
    out["peak_rss_mb"] = peak_rss_mb()
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def spawn(args: argparse.Namespace, name: str, length: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--length", str(length),
           "--model", args.model, "--rope", args.rope, "--data", args.data, "--split", args.split,
           "--stride", str(args.stride), "--extra-strides", str(args.extra_strides), "--prompts", str(args.prompts),
           "--seed", str(args.seed), "--max-new-tokens", str(args.max_new_tokens), "--device", args.device]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"phase {name} at {length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rope", default="none", help="rope method applied to the model (none keeps it as is)")
    parser.add_argument("--lengths", default="8192,16384", help="windows / prompt lengths, comma-separated")
    parser.add_argument("--data", default="gutenberg")
    parser.add_argument("--split", default="test")
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--extra-strides", type=int, default=1, help="document = W + this many strides")
    parser.add_argument("--prompts", type=int, default=2, help="passkey prompts per length")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (peak GPU memory is reported on cuda)")
    parser.add_argument("--check-at", default="", help="lengths where the fast path also runs in fp32 to check "
                                                       "equality with the reference (default: the smallest)")
    parser.add_argument("--phases", default="ppl-ref,ppl-fast,ppl-fast32,pk-ref,pk-fast")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(phase(args)))
        return
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    check_at = [int(x) for x in args.check_at.split(",") if x.strip()] or [min(lengths)]
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    print(f"# bench_eval: {args.model} rope {args.rope}; device {args.device}; {os.cpu_count()} CPUs ({cpu}); "
          f"doc = W + {args.extra_strides}×{args.stride} tokens of {args.data}:{args.split}; {args.prompts} passkey prompts")
    began = time.perf_counter()
    rows = []
    for length in lengths:
        got = {}
        for name in phases:
            if name == "ppl-fast32" and length not in check_at:
                continue
            got[name] = spawn(args, name, length)
            r = got[name]
            extra = (f"ppl {r['perplexity']:.4f} ({r['tokens']} tokens, {r['windows']} windows; "
                     f"{r['tflops']:.3f} TFLOP/s = {r['roofline_fraction']:.0%} of the {r['dtype']} matmul roofline "
                     f"{r['roofline_tflops']:.3f})" if "perplexity" in r
                     else f"{r['correct']}/{r['prompts']} keys retrieved")
            gpu = f"  peak GPU {r['peak_gpu_mb']:7.0f} MiB" if "peak_gpu_mb" in r else ""
            print(f"{length:>6} {name:<10} {r['dtype']:<8} {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MiB{gpu}  "
                  f"{extra}", flush=True)
        if "ppl-ref" in got and "ppl-fast" in got:
            rows.append((length, "ppl", got["ppl-ref"], got["ppl-fast"]))
        if "pk-ref" in got and "pk-fast" in got:
            rows.append((length, "passkey", got["pk-ref"], got["pk-fast"]))
        if "ppl-ref" in got and "ppl-fast32" in got:
            a, b = got["ppl-ref"]["perplexity"], got["ppl-fast32"]["perplexity"]
            rel = abs(a - b) / a
            print(f"{length:>6} check      fp32 fast vs reference: ppl {b:.6f} vs {a:.6f}, relative difference "
                  f"{rel:.2e} ({'within' if rel <= 1e-3 else 'OUTSIDE'} 1e-3)")
        if "ppl-ref" in got and "ppl-fast" in got:
            a, b = got["ppl-ref"]["perplexity"], got["ppl-fast"]["perplexity"]
            print(f"{length:>6} note       bf16 fast vs fp32 reference: relative difference {abs(a - b) / a:.2e}")
    mem = "peak_gpu_mb" if rows and "peak_gpu_mb" in rows[0][2] else "peak_rss_mb"
    unit = "peak GPU MiB" if mem == "peak_gpu_mb" else "peak RSS MiB"
    print(f"\n| length | eval | reference s | fast s | speed-up | reference {unit} | fast {unit} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for length, what, ref, fast in rows:
        print(f"| {length} | {what} | {ref['seconds']:.2f} | {fast['seconds']:.2f} | {ref['seconds'] / fast['seconds']:.2f}× "
              f"| {ref[mem]:.0f} | {fast[mem]:.0f} |")
    print(f"\nwall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
