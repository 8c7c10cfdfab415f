"""How bf16 training spends its time on this CPU: autocast over fp32 weights against bf16 weights with fp32
master copies, and the fused AdamW against the multi-tensor one (issue 23 item 2).

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/bench_train_casts.py --out docs/results/bench/train-casts.json

SmolLM2-135M with PI ×2, one packed Gutenberg sequence of `--length` tokens per step (the train verb's
data and optimizer settings), activation checkpointing off, SDPA, the chunked loss posinterp trains with.
All phases in one process, one after the other, on the same sequences:

| phase           | weights in the forward            | optimizer                                         |
| --------------- | --------------------------------- | ------------------------------------------------- |
| autocast-fused  | fp32, cast to bf16 by autocast    | fused AdamW on the fp32 weights (today's `train`) |
| autocast-foreach| the same                          | multi-tensor (foreach) AdamW                     |
| bf16-master     | bf16 (no casts in the forward)    | grads copied to fp32 masters, fused AdamW, copied back |

Per phase: seconds per step split into forward+backward and optimizer (the first step is left out as
warm-up), tokens/s, model FLOPs (bench_train's count) as a fraction of the bf16 matmul roofline measured
in the same process, and the losses (the same sequences, so they must agree within bf16 noise).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import MODEL, ROPE, model_flops_per_token  # noqa: E402

PHASES = ("autocast-fused", "autocast-foreach", "bf16-master")


def run_phase(name: str, seqs: list, model_fn) -> dict:
    import torch

    from posinterp.train import loss as L
    from posinterp.train.config import TrainConfig

    d = TrainConfig(MODEL, out=Path("unused"))
    model = model_fn(torch.bfloat16 if name == "bf16-master" else torch.float32)
    model.train()
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    masters = [p.detach().float().clone().requires_grad_(True) for p in params] if name == "bf16-master" else params
    opt = torch.optim.AdamW(masters, lr=d.lr, betas=(d.beta1, d.beta2), weight_decay=d.weight_decay,
                            **({"foreach": True} if name == "autocast-foreach" else {"fused": True}))
    body, head = model.get_decoder(), model.get_output_embeddings()
    fb_s, opt_s, losses = [], [], []
    for seq in seqs:
        ids = torch.from_numpy(seq[None].astype("int64"))
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "bf16-master"):
            hidden = body(input_ids=ids, use_cache=False).last_hidden_state
            loss = L.causal_lm_loss(hidden, head.weight, ids)
        loss.backward()
        t1 = time.perf_counter()
        if name == "bf16-master":
            for p, m in zip(params, masters):
                m.grad = p.grad.float()
                p.grad = None
        torch.nn.utils.clip_grad_norm_(masters, d.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if name == "bf16-master":
            with torch.no_grad():
                for p, m in zip(params, masters):
                    p.copy_(m)
        t2 = time.perf_counter()
        fb_s.append(t1 - t0)
        opt_s.append(t2 - t1)
        losses.append(loss.item())
    timed = slice(1, None) if len(seqs) > 1 else slice(None)
    step = sum(a + b for a, b in zip(fb_s[timed], opt_s[timed])) / len(fb_s[timed])
    return {"phase": name, "forward_backward_s": [round(x, 3) for x in fb_s], "optimizer_s": [round(x, 3) for x in opt_s],
            "step_s": round(step, 3), "tokens_per_s": round(seqs[0].shape[0] / step, 2), "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    import torch

    from posinterp.atomic import write_json
    from posinterp.data.packing import PackedSequences
    from posinterp.machine import cpu_key, matmul_tflops, set_threads
    from posinterp.model import loader, refs
    from posinterp.model.rope import parse_rope
    from posinterp.train.config import TrainConfig

    set_threads()
    names = [p for p in a.phases.split(",") if p]
    if set(names) - set(PHASES):
        raise SystemExit(f"unknown phases {sorted(set(names) - set(PHASES))}; choose from {', '.join(PHASES)}")
    d = TrainConfig(MODEL, out=Path("unused"))
    tok = refs.load_tokenizer(refs.dense(refs.resolve(MODEL)))  # as loader.load reads it; each phase loads its own model
    seqs = PackedSequences.from_corpus(d.data, tok, a.length, split=d.split, seed=d.seed).take(a.steps)
    peak = matmul_tflops(torch.bfloat16, n=4096, seconds=1.0)
    flops = model_flops_per_token(a.length)
    print(json.dumps({"roofline_bf16_tflops": round(peak, 4), "flops_per_token": flops, "cpu": cpu_key()}), flush=True)
    rows = []
    for name in names:
        def model_fn(dtype):
            torch.manual_seed(0)
            return loader.load(MODEL, rope=parse_rope(ROPE), dtype=dtype)[0]
        row = run_phase(name, seqs, model_fn)
        row["roofline_fraction"] = round(row["tokens_per_s"] * flops / 1e12 / peak, 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]["step_s"]
    print(f"\n| phase ({a.length} tokens) | fwd+bwd s | optimizer s | step s | tokens/s | of bf16 roofline | × {rows[0]['phase']} | losses |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        fb = sum(r["forward_backward_s"][1:]) / max(1, len(r["forward_backward_s"]) - 1)
        op = sum(r["optimizer_s"][1:]) / max(1, len(r["optimizer_s"]) - 1)
        print(f"| {r['phase']} | {fb:.2f} | {op:.2f} | {r['step_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['roofline_fraction']:.1%} | {base / r['step_s']:.2f} | {', '.join(f'{x:.4f}' for x in r['losses'])} |")
    if a.out:
        result = {"command": "bench/bench_train_casts.py " + " ".join(sys.argv[1:]), "cpu": cpu_key(),
                  "platform": platform.platform(), "torch": torch.__version__, "length": a.length,
                  "roofline_bf16_tflops": peak, "flops_per_token": flops, "rows": rows}
        write_json(a.out, result)  # atomic: a temporary sibling, then a rename


if __name__ == "__main__":
    main()
