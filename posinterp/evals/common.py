"""What every eval shares: the model/rope/output flags, the window check, fp32 scoring heads, results.

An eval runs in two phases. `prepare` resolves the model and applies `--rope` to a copy of its
config, so a length beyond the window is refused in one line before any weights are loaded. `load`
then goes through `posinterp.model.loader.load(..., rope=...)`, the same code path as `extend`.

Speed on CPU: weights and activations in bf16, but the output head and the log-softmax run in fp32
and only on the positions that are scored (`Head`): over a 16k window the full-vocabulary logits
would be 16384 × 49152 floats (3.2 GB in fp32) of which a sliding window keeps 256 rows.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.atomic import atomic_dir, check_out, write_json, write_text
from posinterp.cli import arg, to_dict
from posinterp.errors import PosinterpError
from posinterp.model.loader import ModelArgs, Prepared
from posinterp.model.rope import rope_parameters

DTYPES = ("auto", "bfloat16", "float32", "float16")
"""`--dtype` values; `auto` is resolved by `posinterp.machine.choose_precision` (bf16 only where fast)."""
DTYPE_HELP = ("compute dtype of weights and activations: auto (bf16 on a GPU that has it and on a CPU where "
              "it is measured to be fast, else fp32), bfloat16, float32, float16")
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@dataclass
class EvalConfig(ModelArgs):
    """Flags shared by `eval passkey` and `eval ppl` (their configs extend this one); the model flags
    (model, --rope, --original-length, --device, --seed) come from `posinterp.model.loader.ModelArgs`."""

    allow_beyond_window: bool = arg(False, help="evaluate lengths beyond the window the (re)configured model is "
                                                "meant for (plain extrapolation); recorded in the results")
    dtype: str = arg("auto", help=DTYPE_HELP + "; scores are reduced in fp32", choices=DTYPES)
    out: Path | None = arg(None, help="folder for results.json, results.md and plots (none: print only)")
    force: bool = arg(False, help="replace a non-empty --out")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out is not None:
            self.out = Path(self.out)
        self.dtype = dtype_name(self.dtype)


def dtype_name(value: str) -> str:
    """A `--dtype` value in torch's spelling (bf16 → bfloat16), `auto` kept; refuses anything else."""
    from posinterp.machine import TORCH_DTYPE, normalize

    name = normalize(value, "--dtype")
    return name if name == "auto" else TORCH_DTYPE[name]


def resolve_dtype(cfg: Any) -> dict:
    """Replace `cfg.dtype` auto by the measured choice for `cfg.device`; returns the choice and its reason."""
    from posinterp.machine import TORCH_DTYPE, announce, choose_precision

    choice = choose_precision(cfg.dtype, cfg.device, "--dtype")
    announce(choice)
    cfg.dtype = TORCH_DTYPE[choice.name]
    return {"dtype": cfg.dtype, "requested": choice.requested, "reason": choice.reason, "probe": choice.probe}


def parse_lengths(text: str, flag: str = "--lengths") -> list[int]:
    """`2048,8192` → [2048, 8192]; `start:stop:count` → `count` lengths spread uniformly, ends included."""
    text = str(text).strip()
    example = f"give e.g. {flag} 2048,8192 or {flag} 1024:16384:16 (start:stop:count)"
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = (int(p) for p in parts)
            if count < 1 or stop < start:
                raise ValueError
            if count == 1:
                values = [stop]
            else:
                values = [int(round(start + (stop - start) * i / (count - 1))) for i in range(count)]
        else:
            values = [int(p) for p in text.replace(" ", ",").split(",") if p.strip()]
    except ValueError:
        raise PosinterpError(f"{flag} {text!r} is not a list of token counts; {example}") from None
    if not values:
        raise PosinterpError(f"{flag} is empty; {example}")
    if min(values) < 1:
        raise PosinterpError(f"{flag} {text!r}: lengths must be positive token counts; {example}")
    return sorted(set(values))


def prepare(cfg: EvalConfig, longest: int, what: str, flag: str) -> Prepared:
    """Resolve the model, apply --rope to a copy of its config and check `longest` fits its window."""
    from posinterp.model import loader

    cfg.device = loader.pick_device(cfg.device)  # a GPU asked for and absent is refused here; auto is resolved
    cfg.precision = resolve_dtype(cfg)
    prep = loader.prepare(cfg.model, cfg.rope_spec, cfg.original_length)
    if longest > prep.window and not cfg.allow_beyond_window:
        raise PosinterpError(
            f"{flag}: {what} {longest} is beyond the window {prep.window} of '{cfg.model}' with --rope {cfg.rope}; "
            f"pass --allow-beyond-window to measure extrapolation, or extend it "
            f"(e.g. --rope pi:{math.ceil(longest / prep.window)})")
    return prep


def load(cfg: EvalConfig) -> tuple[Any, Any, dict | None]:
    """The model (eval mode, `cfg.dtype`, --rope applied by `loader.load`) and its tokenizer."""
    import torch

    from posinterp.model import loader

    cfg.device = loader.pick_device(cfg.device)
    if cfg.dtype == "auto":
        cfg.precision = resolve_dtype(cfg)
    return loader.load(cfg.model, rope=cfg.rope_spec, original_length=cfg.original_length,
                       dtype=getattr(torch, cfg.dtype), device=cfg.device)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Inference mode, dropout off, activation checkpointing off (with it on, `generate` drops the KV cache)."""
    import torch

    was_training = model.training
    # switch checkpointing off layer by layer and back on after, keeping the trainer's own settings
    # (re-enabling through the model API would reset its kwargs)
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in checkpointed:
        m.gradient_checkpointing = False
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m in checkpointed:
            m.gradient_checkpointing = True
        model.train(was_training)


class Head:
    """The output head in fp32, applied only to the hidden states that are scored.

    `decoder(model)` gives the body (`model.model` for LLaMA) whose last hidden states are already
    final-normed; the head is the model's own output embedding, cast once to fp32.
    """

    def __init__(self, model: Any) -> None:
        import torch

        head = model.get_output_embeddings()
        if head is None:
            raise PosinterpError(f"{type(model).__name__} has no output embedding; a causal LM is needed")
        self.weight = head.weight.detach().to(torch.float32)
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach().to(torch.float32)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def logits(self, hidden: Any) -> Any:
        """(..., D) hidden states of any dtype → (..., V) fp32 logits."""
        import torch
        import torch.nn.functional as F

        logits = F.linear(hidden.to(torch.float32), self.weight, self.bias)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def log_probs_of(self, hidden: Any, targets: Any) -> Any:
        """log p(target) for each position: (..., D), (...) → (...) fp32."""
        import torch

        logp = torch.log_softmax(self.logits(hidden), dim=-1)
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def decoder(model: Any) -> Any:
    """The base model that returns hidden states (`model.model` for LLaMA, `gpt_neox` for GPT-NeoX)."""
    body = model.get_decoder()
    if body is model:
        raise PosinterpError(f"{type(model).__name__}: cannot find its base model; a *ForCausalLM model is needed")
    return body


class Timer:
    """Named wall-clock timings, recorded in the results."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def label(model: str, rope: str) -> str:
    """A short run name for tables and plot legends: the model's last path part, plus the rope method."""
    name = Path(str(model).rstrip("/")).name or str(model)
    return name if rope == "none" else f"{name} {rope}"


def header(kind: str, cfg: EvalConfig, prep: Prepared, model: Any = None) -> dict:
    """The part of every results JSON that says what was run, with which stack."""
    from posinterp.versions import versions

    params = rope_parameters(model.config if model is not None else prep.config)
    return {
        "kind": kind,
        "label": label(cfg.model, cfg.rope),
        "model": str(cfg.model),
        "model_files": str(prep.ref.folder),
        "rope": str(cfg.rope_spec),
        "rope_info": prep.rope_info,
        "rope_parameters": params,
        "window": prep.window,
        "original_length": prep.original_length,
        "allow_beyond_window": bool(cfg.allow_beyond_window),
        "precision": getattr(cfg, "precision", None),
        # the attention kernel: SDPA was the fastest correct candidate on the CPU cells of bench/bench_forward.py
        "attention": getattr(model.config, "_attn_implementation", None) if model is not None else None,
        "config": to_dict(cfg),
        "versions": versions(),
    }


def check_output(cfg: EvalConfig) -> None:
    if cfg.out is not None:
        check_out(cfg.out, cfg.force)


def write_results(out: Path | None, force: bool, result: dict, markdown: str,
                  figures: dict[str, Callable[[Path], None]] | None = None) -> Path | None:
    """results.json + results.md (+ figures), all appearing at once in `out`; nothing if `out` is None."""
    if out is None:
        return None
    with atomic_dir(out, force=force) as tmp:
        for name, draw in (figures or {}).items():
            draw(tmp / name)
        write_json(tmp / RESULTS_JSON, result)
        write_text(tmp / RESULTS_MD, markdown)
    return Path(out)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats keep 4 significant digits."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def config_lines(cfg: Any) -> str:
    """The protocol parameters as a markdown bullet list."""
    return "\n".join(f"- {f.name}: `{getattr(cfg, f.name)}`" for f in dataclasses.fields(cfg)) + "\n"
