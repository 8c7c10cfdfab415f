"""The fine-tune: the paper's recipe on long packed sequences, one CPU to many GPUs through accelerate.

Owns: `config` (`TrainConfig`), `setup` (plan, accelerate, optimizer, data), `model_setup` (rope, LoRA,
checkpointing, the loss module), `loop` (steps, saving, the `train` verb), `loss` (chunked cross-entropy),
`checkpoint` (save, resume, prune), `metrics` (metrics.jsonl), `during` (evaluations every N steps) and
`positions` (PoSE's skipped position ids, `--positions pose`).

May import: the shared core, `posinterp.model`, `posinterp.data`, `posinterp.evals` and `posinterp.theory`.

`from posinterp.train import train, TrainConfig` stays the library's entry point.
"""

from __future__ import annotations

from posinterp import lazy

__getattr__ = lazy.exports(__name__, {"train": "posinterp.train.loop", "TrainConfig": "posinterp.train.config"})
