"""RoPE methods as configuration: each method is a set of the model's own `rope_parameters`.

PI is `rope_type: "linear"` with `factor: s` (positions m → m/s); nothing is patched, θ is kept.
The other methods exist for comparison and go through the same code path:

| method  | transformers rope_type | what changes                                   | window field        |
| ------- | ---------------------- | ---------------------------------------------- | ------------------- |
| none    | (unchanged)            | nothing: plain extrapolation beyond L          | L (unchanged)       |
| pi      | linear                 | θ_j / s                                        | s·L                 |
| ntk     | default                | base b → b·s^(d/(d−2)) (static NTK-aware)      | s·L                 |
| dynamic | dynamic                | NTK base recomputed from the running length    | L (transformers reads it as the pre-scaling window) |
| yarn    | yarn                   | per-frequency ramp + attention temperature     | s·L, original L kept in rope_parameters |
| llama3  | llama3                 | high θ_j kept, low θ_j / s, a ramp between     | s·L, original L kept in rope_parameters |

llama3 is the scaling Llama 3.1–3.3 ship (`factor` 8, window 8192 → 131072): with the original window
L, a frequency whose wavelength 2π/θ_j is under L / high_freq_factor (4) is kept, one over
L / low_freq_factor (1) is interpolated (θ_j / s, as PI does), and in between the two are blended by
how many periods fit in L. We write the factors Llama 3.1 ships (`LLAMA3_FREQ_FACTORS`).

`write_legacy_keys` adds the transformers 4.x view (`rope_scaling` + top-level `rope_theta`) to a
config dict so old and new readers agree.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from posinterp.errors import PosinterpError

METHODS: dict[str, str] = {"none": "default", "pi": "linear", "ntk": "default", "dynamic": "dynamic", "yarn": "yarn",
                           "llama3": "llama3"}
"""posinterp method → transformers rope_type."""

LLAMA3_FREQ_FACTORS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
"""llama3's band edges, as Llama 3.1 ships them: wavelengths under L/4 are kept, over L/1 interpolated."""

COMPOSABLE = {"linear"}
REFUSED = {
    "yarn": "YaRN already remaps frequencies per band; stacking another scaling on it is undefined",
    "llama3": "llama3 scaling already stretches low frequencies; PI on top would double-scale them",
    "longrope": "LongRoPE carries per-frequency factors tuned for its own window",
    "dynamic": "dynamic NTK changes the base with the running length; a fixed interpolation cannot compose with it",
}


@dataclass(frozen=True)
class RopeSpec:
    """A rope method and its factor s = L'/L (1 for `none`)."""

    method: str = "pi"
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PosinterpError(f"unknown rope method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.method != "none":
            check_factor(self.factor)

    def __str__(self) -> str:
        return "none" if self.method == "none" else f"{self.method}:{self.factor:g}"


def check_factor(factor: float, flag: str = "--factor") -> float:
    try:
        value = float(factor)
    except (TypeError, ValueError):
        raise PosinterpError(f"{flag} {factor!r} is not a number; give a finite number > 1, e.g. {flag} 4") from None
    if not math.isfinite(value) or value <= 1.0:
        raise PosinterpError(f"{flag} {factor} must be a finite number > 1 (it divides positions); e.g. {flag} 2")
    return value


def parse_rope(text: str) -> RopeSpec:
    """`none`, `pi:2`, `ntk:4`, `dynamic:2`, `yarn:4`, `llama3:8` → RopeSpec."""
    text = str(text).strip()
    method, _, factor = text.partition(":")
    if method not in METHODS:
        scaled = [f"{m}:S" for m in METHODS if m != "none"]
        raise PosinterpError(f"--rope '{text}': unknown method '{method}'; use none, {', '.join(scaled[:-1])} "
                             f"or {scaled[-1]}")
    if method == "none":
        if factor:
            raise PosinterpError(f"--rope '{text}': 'none' takes no factor")
        return RopeSpec("none", 1.0)
    if not factor:
        raise PosinterpError(f"--rope '{text}': give the factor as {method}:S, e.g. {method}:2")
    return RopeSpec(method, check_factor(factor, flag="--rope"))


def rope_parameters(config: Any) -> dict:
    """The config's flat rope parameters (a copy), with rope_type and rope_theta filled in."""
    params = getattr(config, "rope_parameters", None)
    if not params:
        raise PosinterpError(
            f"architecture '{getattr(config, 'model_type', '?')}' does not use RoPE; "
            "Position Interpolation needs a rotary model (LLaMA, Mistral, Qwen2, GPT-NeoX, Phi, ...)")
    params = copy.deepcopy(dict(params))
    params.setdefault("rope_type", params.pop("type", "default"))
    return params


def head_dim(config: Any) -> int:
    """Rotary dimension d (partial rotary included)."""
    params = rope_parameters(config)
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(hd * params.get("partial_rotary_factor", 1.0))


def check_rope_type(config: Any) -> str:
    """The config's rope_type, refused in one line when transformers has no rope function for it."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope_type = rope_parameters(config)["rope_type"]
    # a model class's own default (e.g. "axial" for M-RoPE text models) is computed by the class itself
    known = sorted({"default", getattr(config, "default_rope_type", "default"), *ROPE_INIT_FUNCTIONS})
    if rope_type not in known:
        raise PosinterpError(f"the model's rope_parameters.rope_type (rope_scaling.type in older configs) is "
                             f"{rope_type!r}, which transformers does not know (known: {', '.join(known)}); "
                             "fix the checkpoint's config.json")
    return rope_type


def window(config: Any) -> int:
    """The context length this config is meant to run at (after any scaling)."""
    params = rope_parameters(config)
    if params["rope_type"] == "dynamic":
        return int(round(config.max_position_embeddings * params.get("factor", 1.0)))
    return int(config.max_position_embeddings)


def configure(config: Any, spec: RopeSpec, original_length: int) -> dict:
    """Set `config`'s rope parameters and window for `spec`, in place; returns a summary.

    `original_length` is the window the weights were trained at (L). An existing linear factor
    composes (factors multiply); yarn, llama3, longrope and dynamic scaling are refused, and so is a
    rope_type transformers does not know (it would be replaced silently).
    """
    existing = check_rope_type(config)
    params = rope_parameters(config)
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    info = {"method": spec.method, "factor": spec.factor, "original_length": int(original_length),
            "rope_theta": theta, "composed_with": None}
    if spec.method == "none":
        info["target_length"] = window(config)
        info["rope_type"] = existing
        return info
    if existing in REFUSED:
        raise PosinterpError(f"the model already uses {existing} rope scaling: {REFUSED[existing]}; "
                             "start from the unscaled checkpoint instead")
    prior = 1.0
    if existing in COMPOSABLE:
        prior = float(params.get("factor", 1.0))
        if spec.method != "pi":
            raise PosinterpError(f"the model already uses linear scaling ×{prior:g}; only --method pi composes with it "
                                 f"(got --method {spec.method})")
        info["composed_with"] = prior
    keep = {k: params[k] for k in ("partial_rotary_factor",) if k in params}
    target = int(round(original_length * spec.factor))
    rope_type = METHODS[spec.method]
    new: dict[str, Any] = {"rope_type": rope_type, "rope_theta": theta, **keep}
    if spec.method == "pi":
        new["factor"] = prior * spec.factor
    elif spec.method == "ntk":
        d = head_dim(config)
        new["rope_theta"] = theta * spec.factor ** (d / (d - 2))
    elif spec.method == "dynamic":
        new["factor"] = spec.factor
    elif spec.method in ("yarn", "llama3"):
        new["factor"] = spec.factor
        new["original_max_position_embeddings"] = int(original_length)
        if spec.method == "llama3":
            new.update(LLAMA3_FREQ_FACTORS)
    config.rope_parameters = new
    # dynamic NTK reads max_position_embeddings as the pre-scaling window; every other method
    # is told the new window, which transformers, lm-eval and llama.cpp's converter all read.
    config.max_position_embeddings = int(original_length) if spec.method == "dynamic" else target
    if hasattr(config, "rope_scaling"):
        try:
            delattr(config, "rope_scaling")
        except AttributeError:
            pass
    info.update(target_length=target, rope_type=rope_type, total_factor=new.get("factor", spec.factor),
                rope_parameters=dict(new))
    return info


def write_legacy_keys(config_dict: dict) -> dict:
    """Add transformers 4.x keys, consistent with `rope_parameters`: `rope_scaling` and `rope_theta`."""
    params = dict(config_dict.get("rope_parameters") or {})
    if not params:
        return config_dict
    config_dict["rope_theta"] = params.get("rope_theta", config_dict.get("rope_theta", 10000.0))
    if params.get("rope_type", "default") == "default":
        config_dict["rope_scaling"] = None
    elif params["rope_type"] in ("linear", "dynamic"):
        # exactly {type, factor}: transformers 4.40–4.44 refuse any other key in rope_scaling for these
        config_dict["rope_scaling"] = {"type": params["rope_type"], "factor": params["factor"]}
    else:
        legacy = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        legacy["type"] = legacy["rope_type"]
        config_dict["rope_scaling"] = legacy
    return config_dict
