"""The `train` verb: the paper's short fine-tune at the extended window, top to bottom.

    posinterp train runs/smollm2-16k --data corpus/ --seq-len 16384 --steps 1000 --out runs/smollm2-16k-ft
    posinterp train smollm2-135m --rope pi:2 --seq-len 4096 --steps 30 --lr 1e-4 --out runs/smollm2-16k-ft
    posinterp train ... --resume        # after a crash, a kill or Ctrl-C: the identical batch sequence continues
    posinterp train ... --lora          # LoRA on attention, embeddings and norms trainable (LongLoRA)
    posinterp train smollm2-135m --rope pi:4 --seq-len 2048 --positions pose --out runs/pose-ft   # PoSE
    posinterp train runs/smollm2-16k --task summarize --data govreport/ --seq-len 16384 --out runs/sum-ft
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m posinterp train ...

Recipe (paper §3.1, the defaults of `TrainConfig`): AdamW β (0.9, 0.95), weight decay 0, lr 2e-5,
20 warmup steps rising linearly from 10% of the peak, then constant; gradient clipping 1.0; bf16
autocast over fp32 master weights. Sequences are packed documents of exactly `--seq-len` tokens
(`posinterp.data.packing`); the loss never holds the full logits (`posinterp.train.loss`). Checkpoints
(`posinterp.train.checkpoint`) go to `<out>-checkpoints/`; the final `--out` is a standard extended
checkpoint, loadable by plain `AutoModelForCausalLM.from_pretrained`.

`--positions pose` trains PoSE instead (`posinterp.train.positions`): the same packed sequences, shorter
than the window, with position ids that skip within it; evaluation keeps plain ids.

`--task summarize` fine-tunes on (document, summary) pairs instead (`posinterp.data.sft`): the paper's
prompt, the document cut to fit `--seq-len`, the loss on the summary tokens only; one example per
sequence, right-padded within a micro-batch.

One optimizer step reads `batch_size × grad_accum × processes` sequences (the global batch) from
one stream that every process reads the same way; process r takes every r-th of them, so the
batches and the losses do not depend on how the global batch is split.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

from posinterp.cli import as_config
from posinterp.errors import PosinterpError, Terminated
from posinterp.train.config import TrainConfig
from posinterp.train.metrics import _peak_memory_gb
from posinterp.train.model_setup import hf_model
from posinterp.train.setup import Session, setup

log = logging.getLogger(__name__)


class _Interrupt:
    """Ctrl-C / SIGTERM: remember it; the loop saves at the end of the step and exits. A second one aborts."""

    def __init__(self) -> None:
        self.hit = False
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> _Interrupt:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        again, self.hit, self.signum = self.hit, True, signum
        if again:
            self.stop()
        log.warning("\ninterrupt: saving a checkpoint at the end of this step (interrupt again to abort)")

    def stop(self) -> None:
        """Unwind as the signal asks: SIGTERM exits 143, Ctrl-C 130 (`posinterp.__main__`)."""
        raise Terminated if self.signum == signal.SIGTERM else KeyboardInterrupt

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def micro_batches(cfg: TrainConfig, everyone: list, rank: int, world: int, pad_id: int | None, *, step: int = 0,
                  window: int | None = None) -> tuple[list, int]:
    """(this process's micro-batches as (ids, labels|None, weight, position ids|None), tokens of the global batch).

    Each micro-batch's mean loss is weighted by its share of the global batch's scored tokens (× processes,
    since DDP averages gradients over them), so the loss and gradient do not depend on how the global batch
    is split into processes and micro-batches. Packed lm sequences all score seq_len − 1 tokens: the
    weight is 1 / grad_accum. With --positions pose each sequence's ids are drawn from (seed, `step`, its
    place in the global batch) within `window` (`posinterp.train.positions`); plain ids are None.
    """
    import numpy as np
    import torch

    from posinterp.data import sft
    from posinterp.data.packing import shard
    from posinterp.train import positions

    mine = shard(everyone, rank, world)  # this process's sequences; mine[k] is everyone[rank + k·world]
    if cfg.task != "summarize":
        batch = torch.from_numpy(np.stack(mine).astype(np.int64))  # (B·accum, T)
        out = []
        for i in range(0, len(mine), cfg.batch_size):
            ids = batch[i:i + cfg.batch_size]
            pos = None if cfg.positions == "plain" else positions.batch(
                ids.shape[1], window, cfg.pose_chunks, seed=cfg.seed, step=step,
                indices=[rank + k * world for k in range(i, i + len(ids))])  # (B, T)
            out.append((ids, None, 1.0 / cfg.grad_accum, pos))
        return out, len(everyone) * len(everyone[0])
    scored = sum(sft.scored_tokens(example) for example in everyone)
    out = []
    for i in range(0, len(mine), cfg.batch_size):
        chunk = mine[i:i + cfg.batch_size]
        ids, labels = sft.collate(chunk, pad_id)
        out.append((ids, labels, world * sum(sft.scored_tokens(e) for e in chunk) / max(1, scored), None))
    return out, sum(len(ids) for ids, _ in everyone)


def check_finite(loss_value: float, norm: Any, step: int, lr: float, cfg: TrainConfig, metrics: Any,
                 scaled: bool) -> None:
    """Stop before the optimizer step on a non-finite loss or gradient (a loss-scaled fp16 step skips itself)."""
    from posinterp.train import checkpoint

    grad_norm = float(norm) if norm is not None else float("nan")
    bad_grad = norm is not None and not math.isfinite(grad_norm) and not scaled
    if math.isfinite(loss_value) and not bad_grad:
        return
    what = "loss" if not math.isfinite(loss_value) else "gradient norm"
    value = loss_value if what == "loss" else grad_norm
    metrics.write({"step": step, "loss": loss_value, "grad_norm": grad_norm, "lr": lr, "error": f"non-finite {what}"})
    try:
        good = checkpoint.latest(cfg.checkpoint_dir)
    except PosinterpError as err:
        good = f"none usable ({err})"
    raise PosinterpError(
        f"non-finite {what} ({value}) at step {step}: stopped before the optimizer step, no weights "
        f"were changed; last good checkpoint: {good or 'none'}; lower --lr (now {cfg.lr:g}) or check "
        f"the data, then continue with --resume")


def train_step(s: Session, step: int) -> dict:
    """One optimizer step over the global batch; returns its metrics row (refuses a non-finite one)."""
    import torch

    cfg, acc, world = s.cfg, s.accelerator, s.accelerator.num_processes
    t0 = time.perf_counter()
    batches, step_tokens = micro_batches(cfg, s.stream.take(s.settings["global_batch"]), acc.process_index,
                                         world, s.pad_id, step=step, window=s.plan.model_window)
    total = torch.zeros((), device=acc.device)
    for micro, (ids, labels, weight, pos) in enumerate(batches):  # ids, labels, pos: (B, T)
        ids = ids.to(acc.device)
        labels = labels.to(acc.device) if labels is not None else None
        extra = {} if pos is None else {"position_ids": pos.to(acc.device)}  # plain: the model's own 0 … T−1
        with acc.no_sync(s.module) if micro < len(batches) - 1 else _nullcontext():
            loss = s.module(ids, labels, **extra) * weight
            acc.backward(loss)
        total += loss.detach().float()
    loss_value = float(acc.reduce(total, reduction="mean" if cfg.task != "summarize" else "sum"))
    if cfg.task == "summarize":
        loss_value /= world
    norm = acc.clip_grad_norm_(s.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    lr = s.scheduler.get_last_lr()[0]
    check_finite(loss_value, norm, step, lr, cfg, s.metrics, scaled=s.precision.name == "fp16")
    s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.tokens += step_tokens
    s.losses.append(loss_value)
    dt = time.perf_counter() - t0
    return {"step": step, "loss": loss_value, "lr": lr,
            "grad_norm": float(norm) if norm is not None else float("nan"), "tokens": s.tokens,
            "tokens_per_s": step_tokens / dt, "step_s": dt, "epoch": s.stream.epoch,
            "peak_mem_gb": _peak_memory_gb(acc.device)}


def save(s: Session, step: int, loss_value: float | None) -> Path:
    """A resumable checkpoint of step `step` (weights, optimizer, scheduler, data position)."""
    from posinterp.train import checkpoint

    state = {"step": step, "tokens": s.tokens, "data": s.stream.state(), "loss": loss_value,
             "processes": s.accelerator.num_processes, "resumed_from": s.resumed_from}
    return checkpoint.save(s.cfg.checkpoint_dir, step, accelerator=s.accelerator, model=s.module,
                           lm=s.accelerator.unwrap_model(s.module).lm, tokenizer=s.tokenizer, optimizer=s.optimizer,
                           scheduler=s.scheduler, state=state, settings=s.settings,
                           provenance={**s.provenance, "checkpoint_step": step}, lora=s.cfg.lora, keep=s.cfg.keep)


def evaluate(s: Session, step: int) -> None:
    """--eval-every: passkey and ppl on the main process; RNG and data order untouched."""
    if not s.cfg.eval_every or (step % s.cfg.eval_every and step != s.cfg.steps):
        return
    if s.probe is not None:
        s.metrics.write(s.probe.run(hf_model(s.accelerator.unwrap_model(s.module).lm), step, s.tokens,
                                    s.precision.name, s.accelerator.device))
    s.accelerator.wait_for_everyone()  # the other processes wait only at evaluated steps


def finish(s: Session, seconds: float) -> Path:
    """The final checkpoint (gathered from every process) in `cfg.out`, with the run's summary."""
    from posinterp.train import checkpoint

    cfg, losses = s.cfg, s.losses
    summary = _summary(cfg, s.settings, s.start, s.resumed_from, s.tokens, losses, seconds)
    checkpoint.save_final(cfg.out, accelerator=s.accelerator, model=s.module, tokenizer=s.tokenizer, lora=cfg.lora,
                          provenance={**s.provenance, "training": summary}, force=cfg.force,
                          extra_files={"settings.json": s.settings})
    if s.main:
        log.info("wrote %s: %d steps, loss %s → %s", cfg.out, cfg.steps,
                 f"{losses[0]:.4f}" if losses else "-", f"{losses[-1]:.4f}" if losses else "-")
    s.accelerator.wait_for_everyone()
    s.accelerator.end_training()
    return cfg.out


def train(cfg: TrainConfig | str | None = None, **kwargs: Any) -> Path:
    """Fine-tune and write the final checkpoint to `cfg.out`; returns its path.

    `train(TrainConfig(...))` or `train("runs/smollm2-16k", out="runs/ft", seq_len=4096, steps=30)`.
    """
    import torch
    from tqdm import tqdm

    s = setup(as_config(TrainConfig, cfg, kwargs))
    cfg, acc = s.cfg, s.accelerator
    t_run = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=s.start, disable=not s.main, unit="step", dynamic_ncols=True,
               desc=f"train {s.plan.seq_len} tok")
    try:
        with _Interrupt() as interrupt:
            if s.start == 0:
                evaluate(s, 0)
            for step in range(s.start + 1, cfg.steps + 1):
                row = train_step(s, step)
                s.metrics.write({**row, "elapsed_s": time.perf_counter() - t_run})
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                bar.update(1)
                evaluate(s, step)
                stop = torch.tensor(float(interrupt.hit), device=acc.device)
                stop = float(acc.reduce(stop, reduction="sum")) > 0  # every process stops at the same step
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or stop:
                    path = save(s, step, row["loss"])
                    if s.main:
                        bar.write(f"saved {path}")
                if stop:
                    log.warning("interrupted after step %d; checkpoint saved in %s; continue with --resume",
                                step, cfg.checkpoint_dir)
                    interrupt.stop()
    finally:
        bar.close()
        s.metrics.close()
    return finish(s, time.perf_counter() - t_run)


def _summary(cfg: TrainConfig, s: dict, start: int, resumed_from: str | None, tokens: int, losses: list[float],
             wall: float) -> dict:
    """The `training` entry of the final checkpoint's posinterp.json."""
    return {"steps": cfg.steps, "steps_this_run": cfg.steps - start, "resumed_from": resumed_from,
            "seq_len": s["seq_len"], "global_batch": s["global_batch"], "tokens": tokens,
            "task": cfg.task, "data": s["data_description"], "seed": cfg.seed, "lr": cfg.lr, "schedule": cfg.schedule,
            "warmup": cfg.warmup, "precision": s["precision"], "precision_why": s["precision_why"],
            "processes": s["processes"], "distributed": s["distributed"], "distributed_note": s["distributed_note"],
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets,
                     "trainable": cfg.lora_trainable} if cfg.lora else None,
            "eval_every": cfg.eval_every or None, "pose": s.get("pose"),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "wall_s_this_run": round(wall, 1), "checkpoint_dir": str(cfg.checkpoint_dir)}



class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
