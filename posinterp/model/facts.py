"""The one strict reading of a checkpoint's facts: window, rope θ and scaling, head dim, layer and head counts.

Every value posinterp takes from a `config.json` passes `check_facts` before any work starts; an error names
the file and the key (`FILE: key = value must ...`), the same way a bad flag is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError, cause
from posinterp.model.refs import ModelRef
from posinterp.model.rope import rope_parameters, window

NON_ROPE = {
    "gpt2": "learned absolute positions", "gpt_bigcode": "learned absolute positions",
    "opt": "learned absolute positions", "bloom": "ALiBi", "mpt": "ALiBi", "bert": "learned absolute positions",
    "t5": "relative position buckets", "gpt_neo": "learned absolute positions",
}


def load_config(ref: ModelRef) -> Any:
    import transformers
    from transformers import AutoConfig

    where = ref.folder / (ref.gguf_file or "config.json")
    if ref.gguf_file is None:
        try:
            raw = json.loads(where.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raw = None  # refused below, by transformers' reading, with the damaged-file hint
        if isinstance(raw, dict):
            check_facts(raw, where)
    try:
        config = AutoConfig.from_pretrained(ref.folder, **ref.hf_kwargs())
    except Exception as err:  # damaged files fail deep inside (json, struct, numpy, ...): one line, not a traceback
        damaged = ref.gguf_file is not None or isinstance(err, OSError | EOFError | UnicodeDecodeError)
        hint = ("the file is damaged or incomplete: fetch the model again" if damaged else
                f"transformers {transformers.__version__} cannot read it (an unknown model_type needs a newer one)")
        raise PosinterpError(f"cannot read the config of '{ref.source}' from {where} ({cause(err)}); {hint}") from None
    if hasattr(config, "quantization_config") and ref.gguf_file:
        del config.quantization_config
    return config


def check_rope(config: Any) -> None:
    """Refuse architectures without rotary position embeddings, naming what they use instead."""
    model_type = getattr(config, "model_type", "?")
    if model_type in NON_ROPE:
        raise PosinterpError(f"architecture '{model_type}' uses {NON_ROPE[model_type]}, not RoPE; "
                             "Position Interpolation applies only to rotary models (LLaMA, Mistral, Qwen2, GPT-NeoX, Phi, ...)")
    rope_parameters(config)


FACT_KEYS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
             "max_position_embeddings", "rope_theta", "rope_parameters", "rope_scaling", "partial_rotary_factor")


def check_facts(config: Any, where: Path | str) -> None:
    """One strict reading of what posinterp takes from a checkpoint, with the care a flag gets: the window,
    rope θ and an existing scaling factor, the head dim (even: RoPE rotates pairs), the layer and head
    counts. `config` is a loaded config or config.json's raw dict (read before transformers' own checks,
    whose errors name neither file nor key). A bad value is refused in one line naming the file and key."""
    import math

    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    facts = {k: get(k) for k in FACT_KEYS}

    def bad(key: str, value: Any, want: str) -> PosinterpError:
        return PosinterpError(f"{where}: {key} = {value!r} {want}; the checkpoint's config is damaged or not a "
                              "model posinterp can extend")

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)

    def positive_int(key: str, value: Any) -> int:
        if not number(value) or value != int(value) or int(value) < 1:
            raise bad(key, value, "must be a positive whole number")
        return int(value)

    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings"):
        if facts[key] is not None:
            positive_int(key, facts[key])
    heads, kv = int(facts["num_attention_heads"] or 0), facts["num_key_value_heads"]
    if kv is not None and heads and (positive_int("num_key_value_heads", kv) > heads or heads % int(kv)):
        raise bad("num_key_value_heads", kv, f"must divide num_attention_heads ({heads})")
    params = facts["rope_parameters"] if isinstance(facts["rope_parameters"], dict) else \
        facts["rope_scaling"] if isinstance(facts["rope_scaling"], dict) else {}
    theta = params.get("rope_theta", facts["rope_theta"])
    if theta is not None and (not number(theta) or theta <= 1):
        raise bad("rope_theta", theta, "must be a finite number above 1 (e.g. 10000)")
    factor = params.get("factor")
    if factor is not None and (not number(factor) or factor <= 0):
        raise bad("rope_parameters.factor", factor, "must be a positive finite number")
    dim = facts["head_dim"]
    if dim is not None:
        positive_int("head_dim", dim)
    elif heads and facts["hidden_size"]:
        if int(facts["hidden_size"]) % heads:
            raise bad("hidden_size", facts["hidden_size"], f"must be a multiple of num_attention_heads ({heads})")
        dim = int(facts["hidden_size"]) // heads
    partial = params.get("partial_rotary_factor", facts["partial_rotary_factor"]) or 1.0
    if dim is not None and number(partial) and int(dim * partial) % 2:
        raise bad("head_dim", dim, f"must be even (RoPE rotates pairs of dimensions; rotary part {int(dim * partial)})")


def original_window(config: Any, override: int | None = None) -> int:
    """The window the weights were trained at; `override` (--original-length) wins."""
    if override is not None:
        if int(override) < 1:
            raise PosinterpError(f"--original-length {override} must be a positive token count")
        return int(override)
    try:
        return window(config)
    except (AttributeError, TypeError):
        raise PosinterpError(f"the config of '{getattr(config, 'model_type', '?')}' has no max_position_embeddings; "
                             "give the trained window with --original-length N") from None
