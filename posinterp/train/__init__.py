"""The fine-tune: the paper's recipe on long packed sequences, one CPU to many GPUs through accelerate.

Owns: `config` (`TrainConfig`), `setup` (plan, accelerate, optimizer, data), `model_setup` (rope, LoRA,
checkpointing, the loss module), `loop` (steps, saving, the `train` verb), `loss` (chunked cross-entropy),
`checkpoint` (save, resume, prune), `metrics` (metrics.jsonl) and `during` (evaluations every N steps).

May import: the shared core, `posinterp.model`, `posinterp.data`, `posinterp.evals` and `posinterp.theory`.

`from posinterp.train import train, TrainConfig` stays the library's entry point.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"train": "posinterp.train.loop", "TrainConfig": "posinterp.train.config"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'posinterp.train' has no attribute {name!r}")
