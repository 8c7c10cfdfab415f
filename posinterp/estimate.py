"""Memory and time estimates for a training plan, from a config alone (no weights needed).

Used by `run --dry-run`, e.g. for the paper's LLaMA-7B setting where the weights are not here:
the 7B shape comes from a config-only stand-in (recipes/configs/llama2-7b/config.json).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GIB = 1024**3


@dataclass
class Estimate:
    params: int
    gpus: int
    sharded: bool
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    logits_gib: float
    total_gib: float
    flops_per_step: float
    seconds_per_step: float
    hours_total: float
    assumptions: dict

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(config: Any) -> int:
    """Parameters of the model a config describes, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate(config: Any, *, seq_len: int, micro_batch: int, grad_accum: int, steps: int, gpus: int = 1,
             sharded: bool = False, checkpointing: bool = True, lora: bool = False,
             peak_tflops: float = 989.0, mfu: float = 0.4, loss_chunk: int = 4096) -> Estimate:
    """Per-device memory and wall time for AdamW with fp32 master weights and bf16 compute.

    Memory: fp32 weights + fp32 grads + 2 fp32 Adam moments (÷ gpus when sharded, FSDP/ZeRO-3),
    activations (with checkpointing: one bf16 hidden state per layer boundary plus one layer's
    working set; without: ~34·h bytes per token per layer, Korthikanti et al.), and the chunked
    loss's logits. Time: 6·N FLOPs per token plus causal attention 6·T·d_model per token per layer,
    at `peak_tflops` × `mfu` per device.
    """
    n = count_params(config)
    h = config.hidden_size
    layers = config.num_hidden_layers
    vocab = config.vocab_size
    shard = gpus if sharded else 1
    trainable = n if not lora else int(0.01 * n)
    weights = 4 * n / shard
    grads = 4 * trainable / shard
    optim = 8 * trainable / shard
    tokens = seq_len * micro_batch
    if checkpointing:
        act = tokens * h * 2 * layers + tokens * h * 34
    else:
        act = tokens * h * 34 * layers
    logits = min(tokens, loss_chunk) * vocab * (2 + 4 + 4)
    total = weights + grads + optim + act + logits
    global_tokens = seq_len * micro_batch * grad_accum * gpus
    flops = 6 * n * global_tokens + 6 * seq_len * h * layers * global_tokens
    if checkpointing:
        flops *= 4 / 3  # one extra forward
    sec = flops / (gpus * peak_tflops * 1e12 * mfu)
    return Estimate(n, gpus, sharded, weights / GIB, grads / GIB, optim / GIB, act / GIB, logits / GIB,
                    total / GIB, flops, sec, sec * steps / 3600,
                    {"peak_tflops_per_device": peak_tflops, "mfu": mfu, "checkpointing": checkpointing,
                     "global_tokens_per_step": global_tokens})
