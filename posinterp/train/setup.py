"""Everything a fine-tune needs before its first step: the plan (steps, data, resume point), accelerate,
the optimizer and schedule, the packed data, and the settings and provenance it records.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posinterp.cli import to_dict
from posinterp.errors import PosinterpError
from posinterp.train.config import IDENTITY, Plan, TrainConfig
from posinterp.train.metrics import Metrics
from posinterp.train.model_setup import hf_model, setup_model

log = logging.getLogger(__name__)


# -- learning-rate schedule -----------------------------------------------------------------------
class Schedule:
    """lr multiplier for optimizer step i (0-based): linear warmup from `start`, then constant or cosine.

    A plain object (not a lambda) so `LambdaLR.state_dict()` can save it.
    """

    def __init__(self, warmup: int, start: float, kind: str = "constant", total: int = 1,
                 floor: float = 0.1) -> None:
        self.warmup, self.start, self.kind, self.total, self.floor = int(warmup), float(start), kind, int(total), float(floor)

    def __call__(self, i: int) -> float:
        if i < self.warmup:
            return self.start + (1.0 - self.start) * i / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (i - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- run bookkeeping -------------------------------------------------------------------------------
def describe_processes(kind: str, processes: int, device: Any) -> str:
    """accelerate's distributed type in words: 'one process on the CPU', '2 DDP processes on the CPU',
    'FSDP on 8 GPUs'."""
    dev = getattr(device, "type", str(device))
    where = "the CPU" if dev == "cpu" else ("the GPU" if processes == 1 else f"{processes} GPUs") if dev == "cuda" \
        else dev
    if processes == 1:
        return f"one process on {where}" if kind in ("NO", "MULTI_CPU", "MULTI_GPU") else f"{kind} in one process on {where}"
    name = {"MULTI_CPU": "DDP", "MULTI_GPU": "DDP", "FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}.get(kind, kind)
    if dev == "cuda":
        return f"{name} on {processes} GPUs"
    return f"{processes} {name} processes on {where}"


def _distributed_note(accelerator: Any) -> tuple[str, str | None]:
    """(what runs, a note when accelerate silently ran something other than what was asked)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    what = f"{kind.value if hasattr(kind, 'value') else kind} × {accelerator.num_processes} ({accelerator.device})"
    asked = None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and kind != DistributedType.FSDP:
        asked = "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and kind != DistributedType.DEEPSPEED:
        asked = "DeepSpeed"
    if asked is None:
        return what, None
    actual = "DDP (gloo)" if accelerator.num_processes > 1 else "a single process"
    return what, (f"{asked} was requested but accelerate runs {actual} on {accelerator.device.type}: "
                  f"every process holds the full model, optimizer and gradients")


def _check_resume(saved: dict, settings: dict, folder: Path) -> None:
    saved = {**saved, "rope": saved.get("rope") or "none"}  # checkpoints before 0.2 wrote None for no --rope
    if saved.get("threads") not in (None, settings.get("threads")):
        log.warning("warning: checkpoint %s was trained with %s threads, this run has %s: the continuation is "
                    "not bit-identical to an uninterrupted run (set OMP_NUM_THREADS=%s for that)", folder,
                    saved["threads"], settings.get("threads"), saved["threads"])
    for key in IDENTITY:
        if key in saved and saved[key] != settings.get(key):
            flag = "--batch-size/--grad-accum/processes" if key == "global_batch" else f"--{key.replace('_', '-')}"
            raise PosinterpError(f"{flag} is {settings.get(key)!r} but checkpoint {folder} was trained with "
                                 f"{saved[key]!r}; resume with the same value, or start over with --force")


# -- the verb, in stages ---------------------------------------------------------------------------


def plan(cfg: TrainConfig) -> Plan:
    """Everything that can be refused, refused before any weights load: model, window, checkpoints, data."""
    from posinterp.atomic import check_kind, check_out
    from posinterp.data import sft, summaries
    from posinterp.data.corpus import describe
    from posinterp.model import loader, refs
    from posinterp.train import checkpoint, positions

    check_out(cfg.out, cfg.force)
    check_kind(cfg.checkpoint_dir, "--checkpoint-dir", "folder")
    prep = loader.prepare(cfg.model, cfg.rope_spec, cfg.original_length)
    source, config, model_window = prep.ref, prep.config, prep.window
    seq_len = int(cfg.seq_len or model_window)
    if seq_len > model_window and not cfg.allow_beyond_window:
        raise PosinterpError(f"--seq-len {seq_len} exceeds the model's window {model_window}; extend it first "
                             f"(posinterp extend --target-length {seq_len}) or pass --rope pi:S, or lower --seq-len "
                             "(or --allow-beyond-window for direct fine-tuning with RoPE unchanged)")
    positions.check(cfg.positions, cfg.pose_chunks, cfg.task, seq_len, model_window)  # PoSE needs room to skip
    resume_dir = checkpoint.latest(cfg.checkpoint_dir) if cfg.resume else None
    if not cfg.resume and checkpoint.scan(cfg.checkpoint_dir)[0] and not cfg.force:
        raise PosinterpError(f"--checkpoint-dir {cfg.checkpoint_dir} already holds checkpoints of a run; "
                             "pass --resume to continue it or --force to start over")
    if cfg.task == "summarize":  # the pairs and the token budget are checked before any weights load
        pairs = summaries.load_pairs(cfg.data, split=cfg.split, document_field=cfg.document_field,
                               summary_field=cfg.summary_field)
        budget = sft.fit_budget(refs.load_tokenizer(source), seq_len, max_summary_tokens=cfg.max_summary_tokens,
                                max_input_tokens=cfg.max_input_tokens, window_flag="--seq-len")
        return Plan(source, config, seq_len, model_window, resume_dir, summaries.describe_pairs(cfg.data, cfg.split),
                    pairs, budget)
    from posinterp.data import corpus
    from posinterp.train import checkpoint

    corpus.check(cfg.data, split=cfg.split, text_field=cfg.text_field)  # damaged files: refused before loading
    return Plan(source, config, seq_len, model_window, resume_dir, describe(cfg.data, cfg.split))


def count_corpus(cfg: TrainConfig, p: Plan) -> dict | None:
    """--task lm: the corpus counted once (`corpus.composition`, token counts cached on disk) and refused in one
    line when one pass over it cannot fill one sequence (packing would repeat the same text to fill it)."""
    if cfg.task != "lm":
        return None
    from posinterp.data import corpus
    from posinterp.model import refs

    rows = corpus.composition(cfg.data, cfg.split, refs.load_tokenizer(p.source), text_field=cfg.text_field)
    corpus.check_fills(rows, cfg.data, cfg.split, p.seq_len)
    return rows


def _passes(cfg: TrainConfig, p: Plan, s: dict, counted: dict | None) -> dict:
    """The passes over the data (epochs) of the whole run: steps × global batch × seq_len / the tokens of one
    pass (--task lm), or steps × global batch / pairs (--task summarize)."""
    from posinterp.data import corpus

    if counted is None:
        return {"epochs": cfg.steps * s["global_batch"] / len(p.pairs), "pairs": len(p.pairs)}
    total = corpus.stream_tokens(counted)
    return {"epochs": cfg.steps * s["global_batch"] * p.seq_len / total, "corpus_tokens": total}


def setup_accelerator(cfg: TrainConfig) -> tuple[Any, Any]:
    """(accelerator, precision choice): `auto` resolved for the device, refusals of unsupported launches."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from posinterp.machine import announce, choose_precision, set_threads
    from posinterp.model.loader import pick_device

    device = pick_device(cfg.device)  # a GPU asked for and absent is refused here
    cpu = device == "cpu"
    if cpu:
        set_threads()
    elif ":" in device and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.set_device(int(device.split(":")[1]))  # one process: the GPU asked for
    precision = choose_precision(cfg.precision, device)
    if not torch.distributed.is_initialized():
        # a second train() in the same process (a recipe, tests) may change the precision
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
    accelerator = Accelerator(cpu=cpu, mixed_precision={"bf16": "bf16", "fp16": "fp16"}.get(precision.name, "no"))
    if accelerator.is_main_process:
        announce(precision)
    else:
        log.setLevel(logging.WARNING)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed's engine takes the optimizer step inside backward(), before a non-finite loss or
        # gradient could be caught, and keeps its own partitioned optimizer state
        raise PosinterpError("DeepSpeed is not supported by posinterp train (its engine steps inside backward, "
                             "before the non-finite check); launch with recipes/accelerate/fsdp.yaml or ddp.yaml")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if cfg.lora and fsdp:
        raise PosinterpError("--lora runs with DDP or a single process; use recipes/accelerate/ddp.yaml "
                             f"(got {accelerator.distributed_type})")
    if cfg.eval_every and fsdp:
        raise PosinterpError("--eval-every needs the whole model on one process; use DDP "
                             "(recipes/accelerate/ddp.yaml) or evaluate the saved checkpoints afterwards")
    return accelerator, precision


def setup_optimizer(cfg: TrainConfig, module: Any, accelerator: Any) -> tuple[Any, Any, Any, list]:
    """(module, optimizer, scheduler, trainable params), prepared by accelerate: AdamW and the paper's schedule."""
    import torch
    from accelerate.utils import DistributedType

    params = [p for p in module.parameters() if p.requires_grad]
    # fused AdamW: one kernel for all parameters (CPU and CUDA); sharded (DTensor) params keep the default
    fused = accelerator.device.type in ("cpu", "cuda") and accelerator.distributed_type != DistributedType.FSDP
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                                  **({"fused": True} if fused else {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, Schedule(cfg.warmup, cfg.warmup_from, cfg.schedule, cfg.steps, cfg.min_lr_ratio))
    module, optimizer = accelerator.prepare(module, optimizer)
    params = [p for p in module.parameters() if p.requires_grad]  # FSDP2 replaces them with sharded ones
    return module, optimizer, scheduler, params


def setup_data(cfg: TrainConfig, p: Plan, tokenizer: Any, state: dict | None) -> Any:
    """The batch stream, positioned where a resumed run left it."""
    from posinterp.data import sft
    from posinterp.data.packing import PackedSequences

    if cfg.task == "summarize":
        log.info("summarize: %d pairs of %s; documents cut to %d tokens, summaries to %d", len(p.pairs),
                 p.data_description, p.budget.max_input_tokens, p.budget.max_summary_tokens)
        return sft.SummaryExamples(tokenizer, p.pairs, p.budget, seed=cfg.seed, state=state)
    return PackedSequences.from_corpus(cfg.data, tokenizer, p.seq_len, split=cfg.split, text_field=cfg.text_field,
                                       seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, state=state)


@dataclass
class Session:
    """Everything the training loop touches, built by `setup` from the stages above."""

    cfg: TrainConfig
    plan: Plan
    accelerator: Any
    precision: Any
    module: Any
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    params: list
    settings: dict
    stream: Any
    provenance: dict
    metrics: Any
    probe: Any = None
    start: int = 0
    tokens: int = 0
    resumed_from: str | None = None
    losses: list = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def pad_id(self) -> int | None:
        t = self.tokenizer
        return t.pad_token_id if t.pad_token_id is not None else t.eos_token_id


def setup(cfg: TrainConfig) -> Session:
    """Plan, accelerator, model, optimizer, resumed state and data: the loop's `Session`."""
    from posinterp.data import corpus
    from posinterp.model.export import read_provenance
    from posinterp.train import checkpoint, during

    p = plan(cfg)
    counted = count_corpus(cfg, p)  # still before any work: a corpus too short for one sequence is refused
    accelerator, precision = setup_accelerator(cfg)
    main = accelerator.is_main_process
    if cfg.force and not cfg.resume and main:
        checkpoint.clear_run(cfg.checkpoint_dir)
    accelerator.wait_for_everyone()
    if p.resume_dir is None and cfg.resume:
        log.info("--resume: no complete checkpoint in %s; starting at step 0", cfg.checkpoint_dir)
    module, tokenizer, facts = setup_model(cfg, p, accelerator)
    module, optimizer, scheduler, params = setup_optimizer(cfg, module, accelerator)
    settings = _settings(cfg, p, accelerator, precision, facts, module, params)
    settings.update(_passes(cfg, p, settings, counted))
    start, tokens, data_state, resumed_from = 0, 0, None, None
    if p.resume_dir is not None:
        _check_resume(checkpoint.read_settings(p.resume_dir), settings, p.resume_dir)
        state = checkpoint.restore(p.resume_dir, accelerator=accelerator, model=module, optimizer=optimizer,
                                   scheduler=scheduler)
        start, tokens, data_state = int(state["step"]), int(state["tokens"]), state["data"]
        resumed_from = str(p.resume_dir)
        log.info("resuming from %s (step %d)", p.resume_dir, start)
    if counted is not None and main:
        log.info("data composition: %s", corpus.format_composition(counted))
    stream = setup_data(cfg, p, tokenizer, data_state)
    provenance = _provenance(cfg, p.source, read_provenance(p.source.folder), facts["rope_info"],
                             hf_model(accelerator.unwrap_model(module).lm).config)
    _log_start(cfg, settings)
    if main:
        _log_expected(cfg, settings, hf_model(accelerator.unwrap_model(module).lm).config, precision.name, start)
    metrics = Metrics(cfg.checkpoint_dir, start, main, cfg.tensorboard)
    if main:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    probe = during.Probe.build(cfg, tokenizer, p.seq_len, hf_model(accelerator.unwrap_model(module).lm)) \
        if cfg.eval_every and main else None
    return Session(cfg, p, accelerator, precision, module, tokenizer, optimizer, scheduler, params, settings,
                   stream, provenance, metrics, probe, start, tokens, resumed_from)


def _settings(cfg: TrainConfig, p: Plan, accelerator: Any, precision: Any, facts: dict, module: Any,
              params: list) -> dict:
    """settings.json: the resolved run (what a resume must match, and what the report quotes)."""
    import torch

    from posinterp.model.rope import rope_parameters
    from posinterp.train.positions import describe as describe_positions
    from posinterp.versions import versions

    world = accelerator.num_processes
    global_batch = cfg.batch_size * cfg.grad_accum * world
    distributed, fallback = _distributed_note(accelerator)
    if fallback and accelerator.is_main_process:
        log.warning("warning: %s", fallback)
    hf = hf_model(accelerator.unwrap_model(module).lm)
    return {**to_dict(cfg), "seq_len": p.seq_len, "global_batch": global_batch, "processes": world,
            "precision": precision.name, "precision_why": precision.reason, "threads": torch.get_num_threads(),
            "tokens_per_step": None if cfg.task == "summarize" else global_batch * p.seq_len,  # summarize: varies
            "distributed": distributed, "distributed_note": fallback,
            "processes_in_words": describe_processes(str(getattr(accelerator.distributed_type, "value",
                                                                 accelerator.distributed_type)),
                                                     accelerator.num_processes, accelerator.device),
            "activation_checkpointing": facts["activation_checkpointing"],
            "activation_checkpointing_why": facts["activation_checkpointing_why"], "attn": facts["attn"],
            "model_window": p.model_window, "rope_parameters": rope_parameters(hf.config),
            "pose": describe_positions(cfg.positions, cfg.pose_chunks, p.seq_len, p.model_window),
            "trainable_parameters": sum(x.numel() for x in params),
            "data_description": p.data_description, "versions": versions(),
            "checkpoint_dir": str(cfg.checkpoint_dir)}


def _log_start(cfg: TrainConfig, s: dict) -> None:
    log.info("training %s: %s, %d steps × %d sequences × %d tokens (global batch %d = %d × %d × %d processes), "
             "lr %g %s, precision %s, activation checkpointing %s (%s), attention %s, %d trainable parameters; "
             "data %s: %s epochs (passes over its %s)", cfg.model, s["processes_in_words"], cfg.steps,
             s["global_batch"], s["seq_len"], s["global_batch"], cfg.batch_size, cfg.grad_accum, s["processes"], cfg.lr,
             cfg.schedule, s["precision"], "on" if s["activation_checkpointing"] else "off",
             s["activation_checkpointing_why"], s["attn"], s["trainable_parameters"], s["data_description"],
             f"{s['epochs']:.3g}" if s["epochs"] < 1000 else f"{s['epochs']:,.0f}",
             f"{s['corpus_tokens']:,} tokens" if "corpus_tokens" in s else f"{s['pairs']:,} pairs")
    if s.get("pose"):
        log.info("%s", s["pose"]["note"])


def _log_expected(cfg: TrainConfig, s: dict, config: Any, precision: str, start: int) -> None:
    """The expected time of the steps to run, from this machine's cached stage probe (`run --estimate`)."""
    from posinterp.speed import cached_speed

    hit = cached_speed(config, precision)
    if hit is None or s["processes"] != 1:
        log.info("expected time: shown by the progress bar after the first step (no stage probe of this model "
                 "cached here; `posinterp run --estimate` caches one)")
        return
    speed, when = hit
    per_step = cfg.batch_size * speed.train_step_s(int(s["seq_len"]), cfg.grad_accum)
    log.info("expected ≈ %.1f min for %d steps (%.1f s/step, priced by the stage probe cached here on %s; "
             "evaluations extra)", per_step * (cfg.steps - start) / 60, cfg.steps - start, per_step, when)


def _provenance(cfg: TrainConfig, source: Any, parent: dict | None, rope_info: dict | None, config: Any) -> dict:
    """posinterp.json of the result: the rope facts of the parent (or of --rope) plus the source."""
    from posinterp.model.rope import rope_parameters, window

    keys = ("original_length", "target_length", "factor", "method", "composed_with")
    out = {k: parent[k] for k in keys if parent and k in parent}
    if rope_info:
        out.update({"original_length": rope_info.get("original_length"), "target_length": rope_info.get("target_length"),
                    "factor": rope_info.get("factor"), "method": rope_info.get("method"),
                    "composed_with": rope_info.get("composed_with")})
    out.update({"source": str(cfg.model), "source_files": str(source.folder), "rope": cfg.rope,
                "rope_parameters": rope_parameters(config), "target_length": window(config),
                "verb": "train", "parent": parent})
    return out
