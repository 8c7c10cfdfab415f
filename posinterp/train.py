"""The `train` verb: the paper's short fine-tune at the extended window, top to bottom.

    posinterp train runs/smollm2-16k --data corpus/ --seq-len 16384 --steps 1000 --out runs/smollm2-16k-ft
    posinterp train smollm2-135m --rope pi:2 --seq-len 4096 --steps 30 --lr 1e-4 --out runs/smollm2-16k-ft
    posinterp train ... --resume        # after a crash, a kill or Ctrl-C: the identical batch sequence continues
    posinterp train ... --lora          # LoRA on attention, embeddings and norms trainable (LongLoRA)
    posinterp train runs/smollm2-16k --task summarize --data govreport/ --seq-len 16384 --out runs/sum-ft
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m posinterp train ...

Recipe (paper §3.1, the defaults of `TrainConfig`): AdamW β (0.9, 0.95), weight decay 0, lr 2e-5,
20 warmup steps rising linearly from 10% of the peak, then constant; gradient clipping 1.0; bf16
autocast over fp32 master weights. Sequences are packed documents of exactly `--seq-len` tokens
(`posinterp.data`); the loss never holds the full logits (`posinterp.loss`). Checkpoints
(`posinterp.checkpoint`) go to `<out>-checkpoints/`; the final `--out` is a standard extended
checkpoint, loadable by plain `AutoModelForCausalLM.from_pretrained`.

`--task summarize` fine-tunes on (document, summary) pairs instead (`posinterp.sft`): the paper's
prompt, the document cut to fit `--seq-len`, the loss on the summary tokens only; one example per
sequence, right-padded within a micro-batch.

One optimizer step reads `batch_size × grad_accum × processes` sequences (the global batch) from
one stream that every process reads the same way; process r takes every r-th of them, so the
batches and the losses do not depend on how the global batch is split.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posinterp.cli import arg, as_config, to_dict
from posinterp.errors import PosinterpError
from posinterp.estimate import ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
from posinterp.loss import DEFAULT_CHUNK
from posinterp.machine import PRECISIONS
from posinterp.models import ModelArgs

log = logging.getLogger(__name__)


IDENTITY = ("model", "rope", "original_length", "allow_beyond_window", "data", "split", "text_field", "seq_len", "seed", "shuffle_buffer",
            "global_batch", "lr", "schedule", "warmup", "warmup_from", "min_lr_ratio", "beta1", "beta2",
            "weight_decay", "grad_clip", "precision", "lora", "lora_rank", "lora_alpha", "lora_targets",
            "lora_trainable", "task", "document_field", "summary_field", "max_input_tokens", "max_summary_tokens")
"""Settings a resumed run must share with its checkpoint (else it would not continue the same run)."""


@dataclass(kw_only=True)
class TrainConfig(ModelArgs):
    """The model flags (MODEL, --rope, --original-length, --device, --seed) come from `models.ModelArgs`:
    --rope extends on the fly before training (e.g. pi:2; none: the model as is), --seed sets the data
    order and any random init (LoRA), --device auto|cpu|cuda[:N] where a single process runs."""

    out: Path = arg(help="folder for the final fine-tuned checkpoint")
    task: str = arg("lm", help="lm: next-token loss on packed documents (the paper's fine-tune); summarize: "
                               "loss on the summary of (document, summary) pairs", choices=("lm", "summarize"))
    data: str | None = arg(None, help="training data: files, folder, glob, .jsonl/.parquet, datasets folder, or a "
                                      "built-in corpus (mix: books + Python source + docs, the Pile-like default of the recipes; gutenberg; pydoc; mix+site); comma-separate to combine. With --task "
                                      "summarize: pairs (.jsonl/.parquet/datasets folder, or the built-in smoke set "
                                      "pydoc-summaries). Default: gutenberg, or pydoc-summaries with --task summarize")
    split: str = arg("train", help="split of a built-in corpus (train never includes the held-out test books)",
                     choices=("train", "validation", "test", "all"))
    text_field: str = arg("text", help="field holding the text in .jsonl/.parquet/datasets sources")
    document_field: str = arg("report", help="--task summarize: field holding the document (GovReport: report)")
    summary_field: str = arg("summary", help="--task summarize: field holding the summary (GovReport: summary)")
    max_input_tokens: int | None = arg(None, help="--task summarize: document tokens kept (default: what fits in "
                                                  "--seq-len after the prompt and --max-summary-tokens)")
    max_summary_tokens: int = arg(512, help="--task summarize: summary tokens trained on (longer ones are cut)")
    seq_len: int | None = arg(None, help="tokens per packed sequence (default: the model's window)")
    allow_beyond_window: bool = arg(False, help="train at a --seq-len beyond the model's window with its RoPE "
                                                "unchanged (the paper's direct fine-tuning baseline); the "
                                                "written checkpoint's window is raised to --seq-len")
    steps: int = arg(1000, help="optimizer steps (paper: 1000)")
    batch_size: int = arg(1, help="sequences per process per micro-step")
    grad_accum: int = arg(1, help="micro-steps per optimizer step; global batch = batch-size × grad-accum × processes")
    lr: float = arg(2e-5, help="peak learning rate (paper: 2e-5 for 7B/13B, 1e-5 for 33B/65B)")
    schedule: str = arg("constant", help="after warmup: constant (paper) or cosine", choices=("constant", "cosine"))
    warmup: int = arg(20, help="linear warmup steps (paper: 20)")
    warmup_from: float = arg(0.1, help="warmup starts at this fraction of --lr (paper: 10%%)")
    min_lr_ratio: float = arg(0.1, help="with --schedule cosine: final learning rate as a fraction of --lr")
    beta1: float = arg(0.9, help="AdamW β1")
    beta2: float = arg(0.95, help="AdamW β2 (paper: 0.95)")
    weight_decay: float = arg(0.0, help="AdamW weight decay (paper: 0)")
    grad_clip: float = arg(1.0, help="clip the global gradient norm to this (0 = no clipping)")
    precision: str = arg("auto", help="auto: bf16 on a GPU that has it (else fp16, loss-scaled) and on a CPU where "
                                      "bf16 is measured to be fast, else fp32; bf16/fp16: autocast over fp32 master "
                                      "weights; fp32: everything in fp32", choices=PRECISIONS)
    checkpointing: str = arg("auto", help="activation checkpointing: on, off, or auto (on when activations would "
                                          "not fit in half the free memory)", choices=("auto", "on", "off"))
    attn: str = arg("auto", help="attention kernel: auto (flash_attention_2 on a GPU when installed, else sdpa)",
                    choices=("auto", "sdpa", "flash_attention_2", "eager"))
    loss_chunk: int = arg(DEFAULT_CHUNK, help="tokens per chunk of the lm_head + cross-entropy (never the full logits)")
    shuffle_buffer: int = arg(1000, help="sequences in the shuffle buffer (1 = corpus order)")
    lora: bool = arg(False, help="train LoRA adapters on attention (plus --lora-trainable), merged into --out")
    lora_rank: int = arg(8, help="LoRA rank")
    lora_alpha: float = arg(16.0, help="LoRA alpha (scale = alpha / rank)")
    lora_targets: str = arg("q_proj,k_proj,v_proj,o_proj", help="modules that get LoRA adapters")
    lora_trainable: str = arg("embed,norm", help="with --lora: parameters whose name contains one of these train "
                                                 "fully (LongLoRA: embeddings and norms); empty for none")
    save_every: int = arg(100, help="save a checkpoint every N steps (0 = only at the end)")
    keep: int = arg(2, help="checkpoints to keep (the newest)")
    checkpoint_dir: Path | None = arg(None, help="where checkpoints, metrics.jsonl and TensorBoard logs go "
                                                 "(default: <out>-checkpoints)")
    resume: bool = arg(False, help="continue from the newest complete checkpoint in --checkpoint-dir")
    tensorboard: bool = arg(True, help="write TensorBoard logs beside metrics.jsonl")
    force: bool = arg(False, help="replace a non-empty --out and discard earlier checkpoints of this run")
    eval_every: int = arg(0, help="evaluate at step 0 and every N steps (passkey and held-out perplexity, logged "
                                  "to metrics.jsonl and TensorBoard; the training RNG and data order are untouched); "
                                  "0 = never")
    eval_lengths: str = arg("", help="--eval-every: passkey prompt lengths, e.g. 2048,8192 (default: --seq-len)")
    eval_trials: int = arg(2, help="--eval-every: passkey trials per length (keys spread over depths)")
    eval_ppl_data: str = arg("gutenberg", help="--eval-every: held-out perplexity text (its test split; "
                                               "empty for none)")
    eval_ppl_tokens: int = arg(8192, help="--eval-every: tokens of held-out text scored, in windows of --seq-len")
    eval_heads_length: int | None = arg(None, help="--eval-every: probe length of the heads figures (`theory heads`: "
                                                   "previous-token mass at offsets 1 and 2, induction and passkey "
                                                   "copy mass at +1 and +2, repeat loss); default min(--seq-len, "
                                                   "1024); 0 = none")
    eval_heads_reference: Path | None = arg(None, help="--eval-every: heads.json of `theory heads` whose previous-token "
                                                       "and copy heads are followed (default: this run's own at step 0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data is None:
            from posinterp.sft import BUILTIN_NAME

            self.data = BUILTIN_NAME if self.task == "summarize" else "gutenberg"
        if self.task == "lm" and self.split == "validation":
            raise PosinterpError("--split validation exists only for --task summarize data; "
                                 "use --split train, test or all")
        self.out = Path(self.out)
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.out.with_name(self.out.name + "-checkpoints")
        self.checkpoint_dir = Path(self.checkpoint_dir)
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "keep": self.keep, "loss_chunk": self.loss_chunk, "shuffle_buffer": self.shuffle_buffer,
                    "lora_rank": self.lora_rank}
        for name, value in positive.items():
            if int(value) < 1:
                raise PosinterpError(f"--{name.replace('_', '-')} {value} must be at least 1")
        if self.seq_len is not None and int(self.seq_len) < 2:
            raise PosinterpError(f"--seq-len {self.seq_len} must be at least 2 tokens")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PosinterpError(f"--lr {self.lr} must be a positive finite number, e.g. --lr 2e-5")
        if self.warmup < 0 or self.save_every < 0:
            raise PosinterpError(f"--warmup {self.warmup} / --save-every {self.save_every} must not be negative")
        for name in ("warmup_from", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise PosinterpError(f"--{name.replace('_', '-')} {getattr(self, name)} must be within [0, 1]")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise PosinterpError(f"--{name} {getattr(self, name)} must be within [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise PosinterpError("--weight-decay and --grad-clip must not be negative")
        if self.eval_every < 0 or self.eval_trials < 1 or self.eval_ppl_tokens < 2:
            raise PosinterpError(f"--eval-every {self.eval_every} must not be negative, --eval-trials "
                                 f"{self.eval_trials} at least 1, --eval-ppl-tokens {self.eval_ppl_tokens} at least 2")
        if self.eval_heads_length is not None and int(self.eval_heads_length) < 0:
            raise PosinterpError(f"--eval-heads-length {self.eval_heads_length} must not be negative (0 = none)")
        if self.eval_heads_reference is not None:
            from posinterp.theory_heads import reference_file

            self.eval_heads_reference = reference_file(self.eval_heads_reference, "--eval-heads-reference")
        if self.eval_lengths:
            from posinterp.evals.common import parse_lengths

            parse_lengths(self.eval_lengths, "--eval-lengths")
        if self.out.resolve() == self.checkpoint_dir.resolve():
            raise PosinterpError(f"--checkpoint-dir {self.checkpoint_dir} must differ from --out")


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


# -- model -----------------------------------------------------------------------------------------
def _free_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def resolve_checkpointing(choice: str, config: Any, tokens: int, device: Any) -> tuple[bool, str]:
    """(on?, why): `auto` turns it on when the activations would not fit in half the free memory."""
    if choice != "auto":
        return choice == "on", f"--checkpointing {choice}"
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    need = ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN * tokens * layers * hidden
    free = _free_bytes(device)
    on = need > free // 2
    return on, f"auto: ≈{need / 2**30:.1f} GiB of activations {'>' if on else '≤'} half of {free / 2**30:.1f} GiB free"


def resolve_attn(choice: str, device: Any) -> str:
    import importlib.util

    if choice != "auto":
        return choice
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(cfg: TrainConfig, source: Any, resume_dir: Path | None, attn: str) -> tuple[Any, Any, dict | None]:
    """(trainable model — HF, or PEFT-wrapped with --lora —, tokenizer, rope summary or None), fp32 weights.

    A full fine-tune resumes by loading the checkpoint's own weights (its config already carries the
    rope scaling, so --rope is not applied twice); LoRA rebuilds base + adapters and loads the
    trainable tensors.
    """
    import torch

    from posinterp import models

    spec = cfg.rope_spec if cfg.rope_spec.method != "none" else None
    if resume_dir is not None and not cfg.lora:
        ref = models.ModelRef(str(resume_dir), Path(resume_dir))
        lm, info = models.load_model(ref, dtype=torch.float32, attn_implementation=attn)
    else:
        lm, info = models.load_model(source, rope=spec, original_length=cfg.original_length, dtype=torch.float32,
                                     attn_implementation=attn)
    tokenizer = models.load_tokenizer(source)  # the data are always tokenized by the source's own tokenizer
    if cfg.lora:
        lm = _add_lora(cfg, lm)
        if resume_dir is not None:
            from posinterp.checkpoint import load_trainable

            load_trainable(lm, resume_dir)
    lm.train()
    return lm, tokenizer, info


def _add_lora(cfg: TrainConfig, lm: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
    absent = [t for t in targets if t not in present]
    if not targets or absent:
        raise PosinterpError(f"--lora-targets {cfg.lora_targets!r}: {', '.join(absent) or 'empty'} not in the model; "
                             f"attention projections here are named e.g. "
                             f"{', '.join(sorted(n for n in present if 'proj' in n or 'query' in n)[:6])}")
    peft_model = get_peft_model(lm, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                               target_modules=targets, bias="none"))
    extra = [k.strip() for k in cfg.lora_trainable.split(",") if k.strip()]
    for name, param in peft_model.named_parameters():
        if "lora_" not in name and any(k in name for k in extra):
            param.requires_grad_(True)
    return peft_model


def _hf_model(lm: Any) -> Any:
    """The transformers model inside (PEFT injects its layers in place, so this runs the adapters too)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def _loss_module(lm: Any, chunk: int) -> Any:
    """Wrap the model so its forward returns the chunked loss (DDP/FSDP then see one module)."""
    import torch

    class CausalLMLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm
            hf = _hf_model(lm)
            # FSDP2 auto-wrap reads the layer classes to shard from here
            self._no_split_modules = getattr(hf, "_no_split_modules", None)
            head = hf.get_output_embeddings()
            config = hf.config
            self.plain = (head is None or getattr(head, "bias", None) is not None
                          or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
            """Mean next-token loss; `labels` (IGNORE_INDEX where not scored) default to input_ids."""
            from posinterp import loss

            hf = _hf_model(self.lm)
            if self.plain:  # output bias, softcapping or logit scaling: use the model's own loss
                return hf(input_ids=input_ids, labels=input_ids if labels is None else labels, use_cache=False).loss
            decoder = getattr(hf, hf.base_model_prefix)
            hidden = decoder(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, H)
            return loss.causal_lm_loss(hidden, hf.get_output_embeddings().weight, input_ids, chunk=chunk,
                                       labels=labels)

    return CausalLMLoss()


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


def _peak_memory_gb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class _Metrics:
    """metrics.jsonl (truncated to the resumed step) and TensorBoard, on the main process."""

    def __init__(self, folder: Path, start: int, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = Path(folder) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= start]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=start + 1)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("warning: tensorboard is not installed; metrics go to %s only", self.path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None and row.get("kind") == "eval":
            for length, accuracy in row.get("passkey", {}).items():
                self.writer.add_scalar(f"eval/passkey_{length}", accuracy, row["step"])
            if row.get("ppl") is not None:
                self.writer.add_scalar("eval/ppl", row["ppl"], row["step"])
        elif self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"):
                value = row.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Interrupt:
    """Ctrl-C / SIGTERM: remember it; the loop saves at the end of the step and exits. A second one aborts."""

    def __init__(self) -> None:
        self.hit = False
        self.previous: dict = {}

    def __enter__(self) -> _Interrupt:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        log.warning("\ninterrupt: saving a checkpoint at the end of this step (interrupt again to abort)")

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


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
@dataclass
class Plan:
    """What `train` will do, resolved and checked before any weights load."""

    source: Any
    config: Any
    seq_len: int
    model_window: int
    resume_dir: Path | None
    data_description: str
    pairs: list | None = None
    budget: Any = None


def plan(cfg: TrainConfig) -> Plan:
    """Everything that can be refused, refused before any weights load: model, window, checkpoints, data."""
    from posinterp import checkpoint, models, sft
    from posinterp.atomic import check_out
    from posinterp.corpus import describe

    check_out(cfg.out, cfg.force)
    prep = models.prepare(cfg.model, cfg.rope_spec, cfg.original_length)
    source, config, model_window = prep.ref, prep.config, prep.window
    seq_len = int(cfg.seq_len or model_window)
    if seq_len > model_window and not cfg.allow_beyond_window:
        raise PosinterpError(f"--seq-len {seq_len} exceeds the model's window {model_window}; extend it first "
                             f"(posinterp extend --target-length {seq_len}) or pass --rope pi:S, or lower --seq-len "
                             "(or --allow-beyond-window for direct fine-tuning with RoPE unchanged)")
    resume_dir = checkpoint.latest(cfg.checkpoint_dir) if cfg.resume else None
    if not cfg.resume and checkpoint.scan(cfg.checkpoint_dir)[0] and not cfg.force:
        raise PosinterpError(f"--checkpoint-dir {cfg.checkpoint_dir} already holds checkpoints of a run; "
                             "pass --resume to continue it or --force to start over")
    if cfg.task == "summarize":  # the pairs and the token budget are checked before any weights load
        pairs = sft.load_pairs(cfg.data, split=cfg.split, document_field=cfg.document_field,
                               summary_field=cfg.summary_field)
        budget = sft.fit_budget(models.load_tokenizer(source), seq_len, max_summary_tokens=cfg.max_summary_tokens,
                                max_input_tokens=cfg.max_input_tokens, window_flag="--seq-len")
        return Plan(source, config, seq_len, model_window, resume_dir, sft.describe_pairs(cfg.data, cfg.split),
                    pairs, budget)
    from posinterp import corpus

    corpus.check(cfg.data, split=cfg.split, text_field=cfg.text_field)  # damaged files: refused before loading
    return Plan(source, config, seq_len, model_window, resume_dir, describe(cfg.data, cfg.split))


def setup_accelerator(cfg: TrainConfig) -> tuple[Any, Any]:
    """(accelerator, precision choice): `auto` resolved for the device, refusals of unsupported launches."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    from posinterp.machine import announce, choose_precision, set_threads
    from posinterp.models import pick_device

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


def setup_model(cfg: TrainConfig, p: Plan, accelerator: Any) -> tuple[Any, Any, dict]:
    """(loss module, tokenizer, facts for the settings): weights, LoRA, activation checkpointing, attention."""
    import torch

    torch.manual_seed(cfg.seed)  # LoRA init; identical on every process
    attn = resolve_attn(cfg.attn, accelerator.device)
    lm, tokenizer, rope_info = build_model(cfg, p.source, p.resume_dir, attn)
    hf = _hf_model(lm)
    if rope_info and rope_info.get("composed_with"):
        log.info("note: the model already uses linear scaling ×%g; --rope %s multiplies it to ×%g",
                 rope_info["composed_with"], cfg.rope, rope_info["total_factor"])
    ckpt_on, ckpt_why = resolve_checkpointing(cfg.checkpointing, hf.config, cfg.batch_size * p.seq_len,
                                              accelerator.device)
    if ckpt_on:
        hf.activation_checkpointing_enable()
    if p.seq_len > p.model_window:  # --allow-beyond-window: direct fine-tuning raises the window, RoPE kept
        hf.config.max_position_embeddings = p.seq_len
    facts = {"rope_info": rope_info, "activation_checkpointing": ckpt_on, "activation_checkpointing_why": ckpt_why,
             "attn": attn}
    return _loss_module(lm, cfg.loss_chunk), tokenizer, facts


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
    from posinterp import sft
    from posinterp.data import PackedSequences

    if cfg.task == "summarize":
        log.info("summarize: %d pairs of %s; documents cut to %d tokens, summaries to %d", len(p.pairs),
                 p.data_description, p.budget.max_input_tokens, p.budget.max_summary_tokens)
        return sft.SummaryExamples(tokenizer, p.pairs, p.budget, seed=cfg.seed, state=state)
    return PackedSequences.from_corpus(cfg.data, tokenizer, p.seq_len, split=cfg.split, text_field=cfg.text_field,
                                       seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, state=state)


def micro_batches(cfg: TrainConfig, everyone: list, rank: int, world: int, pad_id: int | None) -> tuple[list, int]:
    """(this process's micro-batches as (ids, labels|None, weight), tokens of the global batch).

    Each micro-batch's mean loss is weighted by its share of the global batch's scored tokens (× processes,
    since DDP averages gradients over them), so the loss and gradient do not depend on how the global batch
    is split into processes and micro-batches. Packed lm sequences all score seq_len − 1 tokens: the
    weight is 1 / grad_accum.
    """
    import numpy as np
    import torch

    from posinterp import sft
    from posinterp.data import shard

    mine = shard(everyone, rank, world)  # this process's sequences
    if cfg.task != "summarize":
        batch = torch.from_numpy(np.stack(mine).astype(np.int64))  # (B·accum, T)
        return [(batch[i:i + cfg.batch_size], None, 1.0 / cfg.grad_accum)
                for i in range(0, len(mine), cfg.batch_size)], len(everyone) * len(everyone[0])
    scored = sum(sft.scored_tokens(example) for example in everyone)
    out = []
    for i in range(0, len(mine), cfg.batch_size):
        chunk = mine[i:i + cfg.batch_size]
        ids, labels = sft.collate(chunk, pad_id)
        out.append((ids, labels, world * sum(sft.scored_tokens(e) for e in chunk) / max(1, scored)))
    return out, sum(len(ids) for ids, _ in everyone)


def check_finite(loss_value: float, norm: Any, step: int, lr: float, cfg: TrainConfig, metrics: Any,
                 scaled: bool) -> None:
    """Stop before the optimizer step on a non-finite loss or gradient (a loss-scaled fp16 step skips itself)."""
    from posinterp import checkpoint

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
    from posinterp import checkpoint, corpus
    from posinterp.evals import during
    from posinterp.export import read_provenance

    p = plan(cfg)
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
    start, tokens, data_state, resumed_from = 0, 0, None, None
    if p.resume_dir is not None:
        _check_resume(checkpoint.read_settings(p.resume_dir), settings, p.resume_dir)
        state = checkpoint.restore(p.resume_dir, accelerator=accelerator, model=module, optimizer=optimizer,
                                   scheduler=scheduler)
        start, tokens, data_state = int(state["step"]), int(state["tokens"]), state["data"]
        resumed_from = str(p.resume_dir)
        log.info("resuming from %s (step %d)", p.resume_dir, start)
    if cfg.task == "lm" and cfg.data in corpus.BUILTIN and main:
        log.info("data composition: %s", corpus.format_composition(corpus.composition(cfg.data, cfg.split, tokenizer)))
    stream = setup_data(cfg, p, tokenizer, data_state)
    provenance = _provenance(cfg, p.source, read_provenance(p.source.folder), facts["rope_info"],
                             _hf_model(accelerator.unwrap_model(module).lm).config)
    _log_start(cfg, settings)
    if main:
        _log_expected(cfg, settings, _hf_model(accelerator.unwrap_model(module).lm).config, precision.name, start)
    metrics = _Metrics(cfg.checkpoint_dir, start, main, cfg.tensorboard)
    if main:
        cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    probe = during.Probe.build(cfg, tokenizer, p.seq_len, _hf_model(accelerator.unwrap_model(module).lm)) \
        if cfg.eval_every and main else None
    return Session(cfg, p, accelerator, precision, module, tokenizer, optimizer, scheduler, params, settings,
                   stream, provenance, metrics, probe, start, tokens, resumed_from)


def train_step(s: Session, step: int) -> dict:
    """One optimizer step over the global batch; returns its metrics row (refuses a non-finite one)."""
    import torch

    cfg, acc, world = s.cfg, s.accelerator, s.accelerator.num_processes
    t0 = time.perf_counter()
    batches, step_tokens = micro_batches(cfg, s.stream.take(s.settings["global_batch"]), acc.process_index,
                                         world, s.pad_id)
    total = torch.zeros((), device=acc.device)
    for micro, (ids, labels, weight) in enumerate(batches):  # ids, labels: (B, T)
        ids = ids.to(acc.device)
        labels = labels.to(acc.device) if labels is not None else None
        with acc.no_sync(s.module) if micro < len(batches) - 1 else _nullcontext():
            loss = s.module(ids, labels) * weight
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
    from posinterp import checkpoint

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
        s.metrics.write(s.probe.run(_hf_model(s.accelerator.unwrap_model(s.module).lm), step, s.tokens,
                                    s.precision.name, s.accelerator.device))
    s.accelerator.wait_for_everyone()  # the other processes wait only at evaluated steps


def finish(s: Session, seconds: float) -> Path:
    """The final checkpoint (gathered from every process) in `cfg.out`, with the run's summary."""
    from posinterp import checkpoint

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
                    raise KeyboardInterrupt
    finally:
        bar.close()
        s.metrics.close()
    return finish(s, time.perf_counter() - t_run)


def _settings(cfg: TrainConfig, p: Plan, accelerator: Any, precision: Any, facts: dict, module: Any,
              params: list) -> dict:
    """settings.json: the resolved run (what a resume must match, and what the report quotes)."""
    import torch

    from posinterp.rope import rope_parameters
    from posinterp.versions import versions

    world = accelerator.num_processes
    global_batch = cfg.batch_size * cfg.grad_accum * world
    distributed, fallback = _distributed_note(accelerator)
    if fallback and accelerator.is_main_process:
        log.warning("warning: %s", fallback)
    hf = _hf_model(accelerator.unwrap_model(module).lm)
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
            "trainable_parameters": sum(x.numel() for x in params),
            "data_description": p.data_description, "versions": versions(),
            "checkpoint_dir": str(cfg.checkpoint_dir)}


def _log_start(cfg: TrainConfig, s: dict) -> None:
    log.info("training %s: %s, %d steps × %d sequences × %d tokens (global batch %d = %d × %d × %d processes), "
             "lr %g %s, precision %s, activation checkpointing %s (%s), attention %s, %d trainable parameters; "
             "data %s", cfg.model, s["processes_in_words"], cfg.steps, s["global_batch"], s["seq_len"], s["global_batch"],
             cfg.batch_size, cfg.grad_accum, s["processes"], cfg.lr, cfg.schedule, s["precision"],
             "on" if s["activation_checkpointing"] else "off", s["activation_checkpointing_why"], s["attn"],
             s["trainable_parameters"], s["data_description"])


def _log_expected(cfg: TrainConfig, s: dict, config: Any, precision: str, start: int) -> None:
    """The expected time of the steps to run, from this machine's cached stage probe (`run --estimate`)."""
    from posinterp.estimate import cached_speed

    hit = cached_speed(config, precision)
    if hit is None or s["processes"] != 1:
        log.info("expected time: shown by the progress bar after the first step (no stage probe of this model "
                 "cached here; `posinterp run --estimate` caches one)")
        return
    speed, when = hit
    per_step = cfg.batch_size * speed.train_step_s(int(s["seq_len"]), cfg.grad_accum)
    log.info("expected ≈ %.1f min for %d steps (%.1f s/step, priced by the stage probe cached here on %s; "
             "evaluations extra)", per_step * (cfg.steps - start) / 60, cfg.steps - start, per_step, when)


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
            "eval_every": cfg.eval_every or None,
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "wall_s_this_run": round(wall, 1), "checkpoint_dir": str(cfg.checkpoint_dir)}



class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _provenance(cfg: TrainConfig, source: Any, parent: dict | None, rope_info: dict | None, config: Any) -> dict:
    """posinterp.json of the result: the rope facts of the parent (or of --rope) plus the source."""
    from posinterp.rope import rope_parameters, window

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
