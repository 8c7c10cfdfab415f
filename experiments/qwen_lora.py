"""Issue 21 item 6: Qwen2.5-Coder-1.5B-Instruct extended by PI ×2 and fine-tuned with LoRA on 2 CPU cores.
Does a LoRA fine-tune bring back what PI shifts (passkey 2048: 100% unextended, 0% under PI ×2 untrained,
docs/results/qwen-mechanism), and do its heads move back?

    R=/work/runs/qwen-lora       # outside the work tree: a later session on this machine resumes from it
    .venv/bin/posinterp fetch qwen2.5-coder-1.5b     # once (already in the cache here)
    # 1. the memory estimate (config only, seconds): full fine-tuning vs LoRA in 16 GiB
    .venv/bin/python experiments/qwen_lora.py estimate
    # 2. the run, in the background from a frozen copy of the code (measured 2026-12-05 over the whole run:
    #    21.2 s a step on 2 cores in bf16, 202 s an evaluation, peak 14.6 GB; 200 steps ≈ 71 min plus 17 min of
    #    evaluations). Results: docs/results/qwen-lora/README.md.
    #    It first measures the original model's heads (`theory heads` at 1024 tokens, $R/reference-none),
    #    then trains with `train --resume`: a killed run (a session's end) is started again the same way and
    #    continues from its last checkpoint (every 25 steps). Start it after the curves1000 queue: both on 2
    #    cores would halve each, and the two together need ≈ 15–18 GB of the 23 here.
    mkdir -p $R/code && git archive HEAD | tar -x -C $R/code
    (cd $R/code && PYTHONPATH=$R/code nohup $PWD/.venv/bin/python experiments/qwen_lora.py run --runs $R >> $R/queue.log 2>&1 &)
    # 3. the summary (summary.json, table.md, curves.png); re-runnable on partial data
    .venv/bin/python experiments/qwen_lora.py summarize --runs $R --out docs/results/qwen-lora

The run (`posinterp train`): `--rope pi:2` (window 32768 → 65536) on `mix` (Gutenberg training books + Python
source + Python docs), packed sequences of 1024 tokens, one per step (1024 tokens a step), 200 steps, seed 0,
lr 2e-4 warmed up over 20 steps then constant, `--precision auto` (bf16 autocast over fp32 weights where the
probe finds bf16 fast), a checkpoint every 25 steps (the newest 2 kept). LoRA rank 16, alpha 32 (scale 2)
on q_proj, k_proj, v_proj and o_proj, plus the RMSNorm weights (`--lora-trainable norm`): 4.4 M trainable
parameters. The embeddings stay frozen (the default `embed,norm` would train 233 M more): in a RoPE model
positions enter only through the rotation of queries and keys, which the adapters on q_proj and k_proj
reach. Evaluated by `train --eval-every 50` (steps 0, 50, 100, 150, 200) on the model being trained (the
weights stay bit-equal to a run without it): passkey at 2048 tokens (5 trials, the same keys every time;
twice the training length, inside the PI ×2 window of 65536: --eval-lengths are not bound to --seq-len and
--allow-beyond-window is not needed), perplexity on the first 4096 tokens of the held-out books (window
1024, stride 512), and the heads figures of `theory heads` at 1024 tokens following the original model's
previous-token and copy heads (step 1). Step 0 is PI ×2 untrained. Activation checkpointing is left to
`auto` (off while ≈ 4.5 GiB of activations fit in half the free memory). A smoke test of the whole path
(TINY: a random qwen2 of window 256 saved by tests/conftest.py's `save_tiny(folder, smol_tokenizer,
"qwen2")`), about a minute:

    .venv/bin/python experiments/qwen_lora.py run --runs /tmp/ql --model TINY --seq-len 128 --eval-lengths 256 \
        --heads-length 256 --ppl-tokens 512 --steps 4 --every 2 --save-every 1
    .venv/bin/python experiments/qwen_lora.py summarize --runs /tmp/ql --out /tmp/ql-out --model TINY \
        --seq-len 128 --steps 4 --every 2

Full fine-tuning does not fit in 16 GB here. The project's estimate (`posinterp.run.estimate.estimate`,
AdamW over fp32 master weights) counts 16 bytes a parameter before any activation: fp32 weights 4 B +
fp32 grads 4 B + two fp32 AdamW moments 2 × 4 B. The dense copy of the Q4_K_M GGUF has 1.777 B parameters
(its output head is stored apart from the embeddings, 233 M more than the tied 1.544 B of the HF release):
6.62 + 6.62 + 13.24 = 26.5 GiB, 28.2 GiB with activations (checkpointed) and the chunked loss's logits.
Even tied, 1.544 B × 16 B = 24.7 GB. 16 GiB holds the states of at most 1.07 B parameters. LoRA keeps the
6.62 GiB of frozen fp32 weights and adds 16 B for each of its 4.4 M trainable parameters (0.07 GB):
≈ 8.4 GiB with the logits and checkpointed activations, ≈ 12.6 GiB without checkpointing (`estimate`
prints the numbers; `summarize` puts them in summary.json as `memory_estimate`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runner import flags, machine, posinterp, sh  # experiments/runner.py, beside this script

MODEL = "qwen2.5-coder-1.5b"
ROW = "pi_lora"
ROPE = "pi:2"
STEPS, EVERY, SAVE_EVERY = 200, 50, 25
TRAIN = {"data": "mix", "seq-len": 1024, "seed": 0, "lr": 2e-4, "warmup": 20, "schedule": "constant",
         "precision": "auto", "keep": 2, "tensorboard": "false"}
LORA = {"lora": "true", "lora-rank": 16, "lora-alpha": 32, "lora-targets": "q_proj,k_proj,v_proj,o_proj",
        "lora-trainable": "norm"}
EVAL = {"eval-lengths": "2048", "eval-trials": 5, "eval-ppl-data": "gutenberg", "eval-ppl-tokens": 4096,
        "eval-heads-length": 1024}
REFERENCE = "reference-none"
BUDGET_GIB = 16.0
"""The memory the question is asked for (16 GiB; 16 GB = 14.9 GiB only widens the gap)."""


def settings(a: argparse.Namespace) -> tuple[dict, dict]:
    """(TRAIN, EVAL) with the hidden smoke-test overrides applied."""
    train, ev = dict(TRAIN), dict(EVAL)
    if a.seq_len is not None:
        train["seq-len"] = a.seq_len
    for key, value in (("eval-lengths", a.eval_lengths), ("eval-heads-length", a.heads_length),
                       ("eval-ppl-tokens", a.ppl_tokens)):
        if value is not None:
            ev[key] = value
    return train, ev


def reference(runs: Path, model: str, length: int) -> Path:
    """The original model's heads (no PI, no training): the heads every evaluation follows."""
    out = runs / REFERENCE
    if not (out / "heads.json").is_file():
        sh(posinterp("theory", "heads", model, "--length", str(length), "--data", "gutenberg", "--split", "test",
                     "--out", str(out)), runs / "commands.log")
    return out / "heads.json"


def done_steps(ckpt: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in ckpt.glob("step-*") if (p / "COMPLETE").is_file()]
    return max(steps, default=0)


def run(runs: Path, a: argparse.Namespace) -> None:
    train, ev = settings(a)
    ref = reference(runs, a.model, int(ev["eval-heads-length"]))
    row = runs / ROW
    out = row / "final"  # the merged model, written atomically after the last step
    if out.is_dir() and any(out.iterdir()):
        print(f"{time.strftime('%FT%T')} {ROW}: done ({out})", flush=True)
        return
    start = done_steps(row / "checkpoints")
    print(f"{time.strftime('%FT%T')} {ROW} step {start} → {a.steps}", flush=True)
    cmd = posinterp("train", a.model, "--rope", ROPE, *flags(train), *flags(LORA), "--steps", str(a.steps),
                    "--save-every", str(a.save_every), "--resume", "--checkpoint-dir", str(row / "checkpoints"),
                    "--out", str(out), "--eval-every", str(a.every), *flags(ev), "--eval-heads-reference", str(ref))
    wall = sh(cmd, row / "commands.log")
    with open(row / "segments.jsonl", "a") as fh:
        fh.write(json.dumps({"from_step": start, "step": a.steps, "wall_s": round(wall, 1),
                             "finished": time.strftime("%FT%T"), "command": " ".join(cmd)}) + "\n")
    print(f"{time.strftime('%FT%T')} {ROW} done", flush=True)


# -- memory ----------------------------------------------------------------------------------------------------
def lora_trainable(config, rank: int, targets: str, trainable: str) -> dict:
    """Exact trainable parameters of the LoRA run (from the config on the meta device): rank × (in + out) for
    each target Linear, plus every parameter whose name holds a --lora-trainable key."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    keys = [k.strip() for k in trainable.split(",") if k.strip()]
    adapters = sum(rank * (m.in_features + m.out_features) for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in names)
    extra = sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in keys))
    return {"adapters": adapters, "extra": extra, "extra_keys": keys, "total": adapters + extra}


def memory_estimate(model: str, seq_len: int, steps: int) -> dict:
    """Full fine-tuning vs LoRA, per `posinterp.run.estimate.estimate` (config only: no weights load)."""
    from posinterp.model.loader import prepare
    from posinterp.model.rope import RopeSpec
    from posinterp.run.estimate import estimate
    from posinterp.speed import GIB

    method, factor = ROPE.split(":")
    config = prepare(model, RopeSpec(method, float(factor))).config
    keep = ("params", "weights_gib", "grads_gib", "optimizer_gib", "activations_gib", "logits_gib", "total_gib")
    rows = {}
    for name, lora in (("full_ft", False), ("lora", True)):
        for ckpt in (True, False):
            e = estimate(config, seq_len=seq_len, micro_batch=1, grad_accum=1, steps=steps, lora=lora,
                         checkpointing=ckpt).as_dict()
            rows[name + ("" if ckpt else "_no_checkpointing")] = {k: round(e[k], 3) if isinstance(e[k], float)
                                                                  else e[k] for k in keep}
    n = rows["full_ft"]["params"]
    head = 0 if getattr(config, "tie_word_embeddings", False) else int(config.vocab_size) * int(config.hidden_size)
    t = lora_trainable(config, int(LORA["lora-rank"]), LORA["lora-targets"], LORA["lora-trainable"])
    exact = {"trainable": t, "weights_gib": round(4 * n / GIB, 3), "grads_gib": round(4 * t["total"] / GIB, 3),
             "optimizer_gib": round(8 * t["total"] / GIB, 3)}
    exact["states_gib"] = round(exact["weights_gib"] + exact["grads_gib"] + exact["optimizer_gib"], 3)
    full = rows["full_ft"]
    states = full["weights_gib"] + full["grads_gib"] + full["optimizer_gib"]
    return {
        "source": f"posinterp.run.estimate.estimate(prepare({model!r}, RopeSpec({method!r}, {factor})).config, "
                  f"seq_len={seq_len}, micro_batch=1, grad_accum=1, steps={steps}, lora=…, checkpointing=…)",
        "model": model, "params": n, "tied_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "params_if_tied": n - head, "budget_gib": BUDGET_GIB,
        "arithmetic": f"full fine-tuning, AdamW over fp32 master weights: {n / 1e9:.3f} B params × (4 B weights + 4 B "
                      f"grads + 2 × 4 B AdamW moments) = {n / 1e9:.3f} B × 16 B = {16 * n / 1e9:.1f} GB "
                      f"({states:.2f} GiB: {full['weights_gib']:.2f} + {full['grads_gib']:.2f} + "
                      f"{full['optimizer_gib']:.2f}) before activations; tied ({(n - head) / 1e9:.3f} B): "
                      f"{16 * (n - head) / 1e9:.1f} GB. {BUDGET_GIB:g} GiB holds the states of at most "
                      f"{BUDGET_GIB * GIB / 16 / 1e9:.2f} B params",
        "estimates": rows, "lora_exact": exact,
        "lora_note": "estimate() prices LoRA with 1% of the parameters trainable; lora_exact counts this run's "
                     "adapters and --lora-trainable parameters",
        "full_ft_fits": full["total_gib"] <= BUDGET_GIB, "lora_fits": rows["lora"]["total_gib"] <= BUDGET_GIB,
        "conclusion": (f"full fine-tuning {'fits' if full['total_gib'] <= BUDGET_GIB else 'does not fit'} in "
                       f"{BUDGET_GIB:g} GiB: {full['total_gib']:.1f} GiB estimated ({states:.1f} GiB of fp32 "
                       f"weights, grads and AdamW moments alone); LoRA: {rows['lora']['total_gib']:.1f} GiB "
                       f"(exact trainable count: {exact['states_gib']:.2f} GiB of states)"),
    }


def show_estimate(model: str, seq_len: int, steps: int) -> dict:
    m = memory_estimate(model, seq_len, steps)
    print(m["arithmetic"])
    for name, e in m["estimates"].items():
        print(f"{name:26s} weights {e['weights_gib']:6.2f}  grads {e['grads_gib']:6.2f}  optimizer "
              f"{e['optimizer_gib']:6.2f}  activations {e['activations_gib']:5.2f}  logits {e['logits_gib']:5.2f}"
              f"  total {e['total_gib']:6.2f} GiB")
    x = m["lora_exact"]
    print(f"lora, exact trainable     {x['trainable']['total']:,} params ({x['trainable']['adapters']:,} adapters + "
          f"{x['trainable']['extra']:,} {','.join(x['trainable']['extra_keys'])}): weights {x['weights_gib']:.2f} "
          f"grads {x['grads_gib']:.3f} optimizer {x['optimizer_gib']:.3f} = {x['states_gib']:.2f} GiB")
    print(m["conclusion"])
    return m


# -- summary ---------------------------------------------------------------------------------------------------
PEAK_MEM = ("peak_mem_gb of metrics.jsonl's train rows (posinterp/train/metrics.py): on the CPU the train process's "
            "peak resident set size (VmHWM of /proc/self/status, in GiB: weights, optimizer, activations, the "
            "evaluations, allocator caches, Python), the largest of any segment; not the torch allocator (that is "
            "what it reports on CUDA: torch.cuda.max_memory_allocated)")


def curve(runs: Path) -> dict | None:
    ckpt = runs / ROW / "checkpoints"
    metrics = ckpt / "metrics.jsonl"
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = {r["step"]: r for r in rows if r.get("kind") == "eval"}  # a resumed segment may repeat a step
    train = [r for r in rows if r.get("kind", "train") == "train" and "step_s" in r]
    saved = {}
    for seg in sorted(ckpt.glob("step-*/settings.json"), key=lambda p: int(p.parent.name.split("-")[1])):
        saved = json.loads(seg.read_text())
    points = []
    for step in sorted(evals):
        r = evals[step]
        points.append({"step": step, "tokens": r["tokens"], "passkey": r["passkey"], "ppl": r["ppl"],
                       "heads": r.get("heads"), "eval_s": r.get("eval_s"),
                       "loss": next((t["loss"] for t in train if t["step"] == step), None)})
    peaks = [r["peak_mem_gb"] for r in train if isinstance(r.get("peak_mem_gb"), int | float)]
    segments = runs / ROW / "segments.jsonl"
    return {"row": ROW, "model": saved.get("model"), "rope": ROPE, "precision": saved.get("precision"),
            "activation_checkpointing": saved.get("activation_checkpointing"),
            "trainable_parameters": saved.get("trainable_parameters"), "points": points,
            "steps_done": max((r["step"] for r in train), default=0),
            "tokens_done": max((r["tokens"] for r in train), default=0),
            "mean_step_s": round(sum(r["step_s"] for r in train) / len(train), 2) if train else None,
            "mean_eval_s": round(sum(p["eval_s"] or 0 for p in points) / len(points), 1) if points else None,
            "peak_mem_gib": round(max(peaks), 2) if peaks else None,
            "first_loss": train[0]["loss"] if train else None, "last_loss": train[-1]["loss"] if train else None,
            "segments": [json.loads(s) for s in segments.read_text().splitlines() if s.strip()]
            if segments.is_file() else []}


def f(x, fmt=".3f") -> str:
    return "—" if x is None else format(x, fmt)


def table(c: dict | None, reference: dict | None, lengths: list[str]) -> str:
    head = ("| step | tokens | " + " | ".join(f"passkey {n}" for n in lengths) + " | ppl | train loss | "
            "prev-token mass @1 / @2 | induction +1 / +2 | copy +1 / +2 | repeat loss |")
    lines = [head, "|" + "---|" * (8 + len(lengths))]

    def heads(h: dict) -> str:
        return (f"{f(h.get('previous_token_mass_1'))} / {f(h.get('previous_token_mass_2'))} | "
                f"{f(h.get('induction_1'))} / {f(h.get('induction_2'))} | "
                f"{f(h.get('copy_1'))} / {f(h.get('copy_2'))} | {f(h.get('repeat_loss'))} |")

    if reference:
        lines.append("| original (no PI, 0 steps) | — | " + " | ".join("—" for _ in lengths) + " | — | — | "
                     + heads(reference))
    for p in (c or {}).get("points", []):
        lines.append(f"| {p['step']} | {p['tokens']} | "
                     + " | ".join(f(p["passkey"].get(n), ".0%") for n in lengths)
                     + f" | {f(p['ppl'], '.2f')} | {f(p['loss'], '.4f')} | " + heads(p["heads"] or {}))
    return "\n".join(lines)


def plot(c: dict, path: Path, reference: dict | None, lengths: list[str], title: str, per_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("passkey", f"passkey accuracy ({', '.join(lengths)} tokens)"), ("ppl", "held-out perplexity"),
              ("previous_token_mass_1", "previous-token heads: mass at offset 1"),
              ("induction_1", "induction mass at +1 (copy heads)"), ("copy_1", "passkey copy mass at +1"),
              ("repeat_loss", "loss on repeated random tokens")]
    fig, axes = plt.subplots(3, 2, figsize=(11, 10))
    for ax, (key, name) in zip(axes.ravel(), panels, strict=True):
        if key == "passkey":
            for n in lengths:
                ax.plot([p["tokens"] for p in c["points"]], [p["passkey"].get(n) for p in c["points"]], marker="o",
                        label=f"{n} tokens")
            ax.legend(fontsize=7)
        else:
            pts = [(p["tokens"], p[key] if key == "ppl" else (p["heads"] or {}).get(key)) for p in c["points"]]
            pts = [(x, y) for x, y in pts if y is not None]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o")
            if reference and reference.get(key) is not None:
                ax.axhline(reference[key], color="0.4", ls=":", lw=1, label="original model (no PI), 0 steps")
                ax.legend(fontsize=7)
        ax.set(title=name, xlabel=f"training tokens ({per_step} a step)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def summarize(runs: Path, out: Path, a: argparse.Namespace) -> None:
    train, ev = settings(a)
    c = curve(runs)
    ref = runs / REFERENCE / "heads.json"
    reference_heads = json.loads(ref.read_text())["figures"] if ref.is_file() else None
    lengths = sorted({n for p in (c or {}).get("points", []) for n in p["passkey"]}, key=int) \
        or [x.strip() for x in str(ev["eval-lengths"]).split(",")]
    memory = memory_estimate(a.model, int(train["seq-len"]), a.steps)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": f"experiments/qwen_lora.py summarize --runs RUNS --out {out}", "machine": machine(),
               "model": a.model, "rope": ROPE, "steps": a.steps, "eval_every": a.every, "train": train, "lora": LORA,
               "eval": ev, "peak_mem_measures": PEAK_MEM,
               "reference_heads": reference_heads, "run": c, "memory_estimate": memory}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out / "summary.json")
    text = table(c, reference_heads, lengths)
    if c:
        text += (f"\n\nsteps done {c['steps_done']} of {a.steps} ({c['tokens_done']} tokens), mean step "
                 f"{f(c['mean_step_s'], '.1f')} s, mean evaluation {f(c['mean_eval_s'], '.1f')} s; precision "
                 f"{c['precision']}; peak memory {f(c['peak_mem_gib'], '.2f')} GiB (the train process's peak RSS, "
                 f"VmHWM); machine: {summary['machine']['cpu']}, {summary['machine']['cores']} cores, "
                 f"{', '.join(summary['machine']['flags'])}")
    text += f"\n\nmemory (posinterp.run.estimate): {memory['conclusion']}. {memory['arithmetic']}."
    if c and c["points"]:
        title = f"{a.model} + PI ×2, LoRA r{LORA['lora-rank']} on q/k/v/o, {train['seq-len']} tokens per step"
        plot(c, out / "curves.png", reference_heads, lengths, title + " (2 CPU cores)", int(train["seq-len"]))
    (out / "table.md").write_text(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("run", "summarize", "estimate"))
    ap.add_argument("--runs", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/results/qwen-lora"))
    # hidden: a smoke test on a tiny model (e.g. a random qwen2 of window 256: --seq-len 128 --eval-lengths 256
    # --heads-length 256 --ppl-tokens 512 --steps 4 --every 2 --save-every 1)
    hide = argparse.SUPPRESS
    ap.add_argument("--model", default=MODEL, help=hide)
    ap.add_argument("--steps", type=int, default=STEPS, help=hide)
    ap.add_argument("--every", type=int, default=EVERY, help=hide)
    ap.add_argument("--save-every", type=int, default=SAVE_EVERY, help=hide)
    ap.add_argument("--seq-len", type=int, help=hide)
    ap.add_argument("--eval-lengths", help=hide)
    ap.add_argument("--heads-length", type=int, help=hide)
    ap.add_argument("--ppl-tokens", type=int, help=hide)
    a = ap.parse_args()
    if a.what == "estimate":
        show_estimate(a.model, int(settings(a)[0]["seq-len"]), a.steps)
        return
    if a.runs is None:
        ap.error(f"{a.what} needs --runs")
    if a.what == "run":
        a.runs.mkdir(parents=True, exist_ok=True)
    {"run": lambda: run(a.runs, a), "summarize": lambda: summarize(a.runs, a.out, a)}[a.what]()


if __name__ == "__main__":
    main()
