"""Memory and time estimates for a training plan, from a config alone (no weights needed).

Used by `run --dry-run`, e.g. for the paper's LLaMA-7B setting where the weights are not here:
the 7B shape comes from a config-only stand-in (recipes/configs/llama2-7b/config.json).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from posinterp.speed import (
    ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN,
    ATTENTION_LENGTHS,
    GIB,
    HEAD_ROWS,
    Speed,
    remember_speed,
)
from posinterp.train.loss import DEFAULT_CHUNK

PEAK_TFLOPS = 989.0
"""Default peak per device for a plan on hardware that is not here: an H100/H200's dense bf16 TFLOP/s."""
MFU = 0.4
"""Default model-FLOPs utilisation assumed for such a plan."""


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
             peak_tflops: float = PEAK_TFLOPS, mfu: float = MFU, loss_chunk: int = DEFAULT_CHUNK) -> Estimate:
    """Per-device memory and wall time for AdamW with fp32 master weights and bf16 compute.

    Memory: fp32 weights + fp32 grads + 2 fp32 Adam moments (÷ gpus when sharded, FSDP/ZeRO-3),
    activations (with checkpointing: one bf16 hidden state per layer boundary plus one layer's
    working set; without: `ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN`·h bytes per token per layer), and the chunked
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
        act = tokens * h * 2 * layers + tokens * h * ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
    else:
        act = tokens * h * ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN * layers
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


def measure_speed(model: str, *, rope: Any = None, precision: str = "auto", lengths: tuple = (1024, 4096),
                  train_lengths: tuple = (1024, 2048), attention_lengths: tuple = ATTENTION_LENGTHS,
                  head_rows: int = HEAD_ROWS) -> Speed:
    """Time `model` here: one forward at each of `lengths`, a training micro-step at each of
    `train_lengths`, and one optimizer step.

    The curves are extrapolated to the evaluated lengths (up to 16384 and more), so the longer
    measured length should be long: through 512 and 2048 the fit priced SmolLM2's 8192-token windows
    at 0.6× their measured time on 2 CPU cores (attention slows per FLOP as it outgrows the caches).
    One layer's attention kernel is timed at each of `attention_lengths` (with the model's heads, head
    dim and dtype), which prices long windows from measurement rather than from the two forwards.
    Takes ≈ 40 s for a 135M model on 2 CPU cores (AVX-512 BF16); the result prices every stage of a plan.
    """
    import time

    import torch

    from posinterp.machine import choose_precision, set_threads
    from posinterp.model import loader
    from posinterp.train.loss import causal_lm_loss

    set_threads()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    choice = choose_precision(precision, device)
    prep = loader.prepare(model, rope)
    vocab = int(prep.config.vocab_size)

    def ids(n: int) -> Any:
        return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(n)).to(device)

    def timed(fn: Any, repeats: int = 2, warm: bool = True) -> float:
        if warm:
            fn()  # warm-up: kernel selection, first-call allocations
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    # training keeps fp32 master weights under autocast (posinterp.train)
    lm, _ = prep.load(torch.float32, device=device)
    body = lm.get_decoder()
    autocast = torch.autocast(device, dtype=choice.torch_dtype, enabled=choice.name != "fp32")
    optimizer = torch.optim.AdamW(lm.parameters(), lr=0.0, **({"fused": True} if device in ("cpu", "cuda") else {}))

    def micro_step(x: Any) -> None:
        lm.zero_grad(set_to_none=False)  # gradients are kept for the optimizer step below
        with autocast:
            hidden = body(input_ids=x, use_cache=False).last_hidden_state
            loss = causal_lm_loss(hidden, lm.get_output_embeddings().weight, x)
        loss.backward()

    lm.train()
    train = {}
    for i, n in enumerate(train_lengths):
        x = ids(int(n))
        train[int(n)] = timed(lambda x=x: micro_step(x), repeats=1, warm=i == 0)
    optimizer_s = timed(optimizer.step, repeats=2)
    # evaluations hold the weights in the chosen dtype (posinterp.evals.common.load): the same model, cast
    lm.zero_grad(set_to_none=True)
    lm.to(choice.torch_dtype).eval()
    forward = {}
    for i, n in enumerate(lengths):
        x = ids(int(n))
        with torch.inference_mode():
            forward[int(n)] = timed(lambda x=x: body(input_ids=x, use_cache=False), repeats=2 if i == 0 else 1,
                                    warm=i == 0)
    from posinterp.evals.common import Head

    head, rows = Head(lm), int(head_rows)
    hidden = torch.randn(rows, int(prep.config.hidden_size), device=device).to(choice.torch_dtype)
    targets = ids(rows)[0]
    with torch.inference_mode():
        head_s = timed(lambda: head.log_probs_of(hidden, targets), repeats=1) / rows
    attention = time_attention(prep.config, attention_lengths, choice.torch_dtype, device, timed)
    speed = Speed(choice.name, forward, train, optimizer_s, head_s, attention, int(prep.config.num_hidden_layers))
    remember_speed(prep.config, speed)
    return speed


def time_attention(config: Any, lengths: tuple, dtype: Any, device: str, timed: Any) -> dict:
    """tokens → seconds of one layer's causal SDPA (the evals' kernel) with this model's query and key/value
    heads and head dim, on random inputs."""
    import torch
    import torch.nn.functional as F

    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    out = {}
    for i, n in enumerate(sorted(int(t) for t in lengths)):
        g = torch.Generator().manual_seed(n)
        q = torch.randn(1, heads, n, dim, generator=g).to(device=device, dtype=dtype)
        k, v = (torch.randn(1, kv, n, dim, generator=g).to(device=device, dtype=dtype) for _ in range(2))
        with torch.inference_mode():
            out[n] = timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                enable_gqa=kv != heads),
                           repeats=1, warm=i == 0)
    return out


LOAD_S = 5.0
"""Seconds to load a small model and its tokenizer before a stage computes (measured: 2–8 s for SmolLM2)."""


def train_seconds(speed: Speed, *, steps: int, seq_len: int, batch_size: int = 1, grad_accum: int = 1,
                  example_tokens: list[int] | None = None) -> float:
    """A fine-tune stage: `steps` optimizer steps of `grad_accum` micro-steps of `batch_size` sequences of `seq_len`
    tokens, or (`--task summarize`, one unpadded example per sequence) of the data's own `example_tokens`: a
    micro-step then costs the mean over them (not the cost at their mean length: it is quadratic in T)."""
    if not example_tokens:
        return LOAD_S + steps * batch_size * speed.train_step_s(seq_len, grad_accum)
    step = sum(speed.train_step_s(min(int(n), seq_len), grad_accum) for n in example_tokens) / len(example_tokens)
    return LOAD_S + steps * batch_size * step


def ppl_seconds(speed: Speed, *, doc_tokens: list[int], windows: dict[int, int]) -> float:
    """A perplexity stage: every sliding window (size → stride) over documents of `doc_tokens` tokens, its
    forward and the fp32 head on the tokens it scores."""
    from posinterp.evals.perplexity import windows as spans

    total = LOAD_S
    for size, stride in windows.items():
        for n in doc_tokens:
            total += sum(speed.forward_s(e - b) + (e - f) * speed.head_s_per_token for b, e, f in spans(n, size, stride))
    return total


def passkey_seconds(speed: Speed, *, lengths: list[int], trials: int, new_tokens: int = 8) -> float:
    """A passkey stage: one prefill per prompt plus greedy decoding (each new token costs its own weights
    pass and attention over the L cached keys, `Speed.decode_token_s`)."""
    return LOAD_S + sum(trials * (speed.forward_s(n) + new_tokens * speed.decode_token_s(n)) for n in lengths)


def ruler_seconds(speed: Speed, *, lengths: list[int], tasks: list[str], samples: int | None,
                  max_new_tokens: int | None = None) -> float:
    """A RULER stage, passkey's price model per prompt: at each length, `samples` prompts per task (the
    protocol's default: 10 up to 4096 tokens, 5 above), each one prefill plus its task's answer tokens (RULER's
    per task, capped by `max_new_tokens`) decoded against the cache. An upper bound: the shared haystack
    prefixes (niah_single_*) and answers that stop early at EOS are not subtracted."""
    from posinterp.evals.ruler import new_tokens_of, samples_at

    decode = sum(new_tokens_of(t, max_new_tokens) for t in tasks)
    return LOAD_S + sum(samples_at(n, samples) * (len(tasks) * speed.forward_s(n) + decode * speed.decode_token_s(n))
                        for n in lengths)


def summarize_seconds(speed: Speed, *, prompt_tokens: list[int], new_tokens: int) -> float:
    """A summarize stage, passkey's price model per document: one prefill of its prompt plus `new_tokens` decoded
    against the cache (an upper bound: a summary that stops at EOS earlier is not subtracted)."""
    return LOAD_S + sum(speed.forward_s(n) + new_tokens * speed.decode_token_s(n) for n in prompt_tokens)
