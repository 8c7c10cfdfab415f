"""`TrainConfig`: every flag of `posinterp train`, with its default and help (the CLI, the library and
recipes read them from here), and the settings that identify a run for `--resume`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg
from posinterp.errors import PosinterpError
from posinterp.machine import PRECISIONS
from posinterp.model.loader import ModelArgs
from posinterp.train import positions as _positions
from posinterp.train.loss import DEFAULT_CHUNK

IDENTITY = ("model", "rope", "original_length", "allow_beyond_window", "data", "split", "text_field", "seq_len", "seed", "shuffle_buffer",
            "global_batch", "lr", "schedule", "warmup", "warmup_from", "min_lr_ratio", "beta1", "beta2",
            "weight_decay", "grad_clip", "precision", "lora", "lora_rank", "lora_alpha", "lora_targets",
            "lora_trainable", "task", "document_field", "summary_field", "max_input_tokens", "max_summary_tokens",
            "positions", "pose_chunks")
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
    positions: str = arg("plain", help="position ids of the training sequences: plain (0 … seq-len − 1, the paper's "
                                       "fine-tune) or pose (PoSE, Zhu et al. 2023: --pose-chunks chunks whose ids skip "
                                       "within the model's window after --rope, so a --seq-len below it trains every "
                                       "distance up to the window); evaluation always uses plain ids",
                         choices=_positions.MODES)
    pose_chunks: int = arg(_positions.DEFAULT_CHUNKS, help="--positions pose: chunks per sequence (paper: 2)")
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
            from posinterp.data.summaries import BUILTIN_NAME

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
        _positions.check(self.positions, self.pose_chunks, self.task, self.seq_len)  # the window: in setup.plan
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
            from posinterp.theory.heads import reference_file

            self.eval_heads_reference = reference_file(self.eval_heads_reference, "--eval-heads-reference")
        if self.eval_lengths:
            from posinterp.evals.common import parse_lengths

            parse_lengths(self.eval_lengths, "--eval-lengths")
        if self.out.resolve() == self.checkpoint_dir.resolve():
            raise PosinterpError(f"--checkpoint-dir {self.checkpoint_dir} must differ from --out")


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
