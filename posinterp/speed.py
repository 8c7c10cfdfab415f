"""This machine's measured speed for a model shape, cached, and the seconds a stage will take from it.

`Speed` holds what the stage probe (`posinterp.run.estimate.measure_speed`) timed: per-token cost, one
layer's attention at several lengths, decode and the output head. Cached in `speed-probe.json` beside the
machine probe, keyed by model shape, precision and CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3

ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 110
"""Activations kept for backward without checkpointing, bytes per token × layer × hidden unit. Measured on
SmolLM2 (bf16 autocast, SDPA, CPU): 9.8 GB peak against 5.7 GB with checkpointing at 4096 tokens. The
estimate and train's `--checkpointing auto` rule both read it (Korthikanti et al.'s 34 assumes fused
bf16 kernels that the CPU path does not have)."""


# -- this machine's speed, measured -------------------------------------------------------------------
def _fit(points: dict) -> tuple[float, float]:
    """(a, b) of t(T) = a·T + b·T² through the two shortest measured (tokens → seconds) points."""
    (t1, s1), (t2, s2) = sorted((int(k), float(v)) for k, v in points.items())[:2]
    b = max(0.0, (s2 / t2 - s1 / t1) / (t2 - t1))
    return max(0.0, s1 / t1 - b * t1), b


def _at(fit: tuple[float, float], tokens: int) -> float:
    a, b = fit
    return a * tokens + b * tokens**2


def _loglog(points: dict, tokens: int) -> float:
    """Seconds at `tokens` from measured (tokens → seconds) points: piecewise power law between them, T²
    beyond the longest (attention's FLOPs), proportional below the shortest."""
    import math

    pts = sorted((int(k), float(v)) for k, v in points.items())
    if tokens <= pts[0][0]:
        return pts[0][1] * tokens / pts[0][0]
    if tokens >= pts[-1][0]:
        return pts[-1][1] * (tokens / pts[-1][0]) ** 2
    for (t1, s1), (t2, s2) in zip(pts, pts[1:], strict=False):
        if t1 <= tokens <= t2:
            power = math.log(max(s2, 1e-12) / max(s1, 1e-12)) / math.log(t2 / t1)
            return s1 * (tokens / t1) ** power
    raise AssertionError("unreachable")


@dataclass
class Speed:
    """Measured seconds of one forward (batch 1) and one training micro-step of a model, in one precision.

    A forward is priced as t(T) = a·T + layers·attention(T): the weights' matmuls grow with T, and
    `attention` holds one layer's causal attention kernel timed at each length the plans use (its time per
    FLOP is not constant: on 2 CPU cores the flash kernel ran 1.4× slower per FLOP at 8192 than at 4096, so
    a quadratic through two short lengths priced SmolLM2's evaluations at 0.66–0.78× their measured time).
    Without `attention` (and for training) the curve is t(T) = a·T + b·T² through two measured lengths. An
    optimizer step adds a fixed `optimizer_s` to every training step.
    """

    precision: str
    forward: dict
    """tokens → measured seconds of one forward (inference, weights in `precision`)."""
    train: dict
    """tokens → measured seconds of one training micro-step's forward and backward (fp32 weights, autocast)."""
    optimizer_s: float
    """measured seconds of one AdamW step (every parameter trained)."""
    head_s_per_token: float = 0.0
    """measured seconds of the evals' fp32 output head and log-softmax per scored token (perplexity)."""
    attention: dict = field(default_factory=dict)
    """tokens → measured seconds of one layer's causal attention kernel (the evals' path, batch 1)."""
    layers: int = 0
    """decoder layers: how many attention kernels a forward runs."""

    @property
    def fit(self) -> tuple[float, float]:
        return _fit(self.forward)

    @property
    def train_fit(self) -> tuple[float, float]:
        return _fit(self.train)

    @property
    def per_token_s(self) -> float:
        """a of the forward: seconds per token outside attention, the mean over the measured lengths."""
        if not self.attention:
            return self.fit[0]
        rest = [(float(s) - self.layers * self.attention_s(int(t))) / int(t) for t, s in self.forward.items()]
        return max(0.0, sum(rest) / len(rest))

    def attention_s(self, tokens: int) -> float:
        """Every layer's attention at `tokens` is `layers` × this."""
        return _loglog(self.attention, tokens)

    def forward_s(self, tokens: int) -> float:
        if not self.attention:
            return _at(self.fit, tokens)
        return self.per_token_s * tokens + self.layers * self.attention_s(tokens)

    def decode_token_s(self, context: int) -> float:
        """One generated token after `context` cached ones: its weights pass plus attention over the cache
        (the slope of the forward's attention term, ≈ 2·attention(L)/L)."""
        if not self.attention:
            a, b = self.fit
            return a + 2 * b * context
        return self.per_token_s + self.layers * 2 * self.attention_s(context) / max(1, context)

    def train_step_s(self, tokens: int, micro_steps: int = 1) -> float:
        return micro_steps * _at(self.train_fit, tokens) + self.optimizer_s

    def as_dict(self) -> dict:
        (a, b), (ta, tb) = self.fit, self.train_fit
        return {**asdict(self), "fit_a_s_per_token": a, "fit_b_s_per_token2": b, "train_fit_a_s_per_token": ta,
                "train_fit_b_s_per_token2": tb, "per_token_s": self.per_token_s}


ATTENTION_LENGTHS = (1024, 2048, 4096, 8192, 16384)
"""Lengths at which the probe times one layer's attention kernel (beyond the longest: priced as T²)."""
HEAD_ROWS = 2048
"""Scored rows the probe's head timing uses: a window's stride in the shipped recipes (1536–6144)."""


SPEED_CACHE = "speed-probe.json"
"""Beside the machine probe's cache: the last measured `Speed` per (model shape, precision, machine), so that
`run --dry-run` and the evals' expected times price from this machine without timing again."""


def shape_key(config: Any) -> str:
    """What a forward's speed depends on: architecture, layers, widths, heads, vocabulary (not the weights
    or the rope: an extended or fine-tuned checkpoint runs at its source's speed)."""
    heads = int(config.num_attention_heads)
    return (f"{config.model_type}-l{config.num_hidden_layers}-h{config.hidden_size}-i{getattr(config, 'intermediate_size', 0)}"
            f"-a{heads}/{getattr(config, 'num_key_value_heads', None) or heads}-v{config.vocab_size}")


def _speed_key(config: Any, precision: str) -> dict:
    from posinterp.machine import cpu_key

    return {"shape": shape_key(config), "precision": str(precision), **cpu_key()}


def _speed_path() -> Any:
    from posinterp.machine import probe_cache_path

    return probe_cache_path().with_name(SPEED_CACHE)


def remember_speed(config: Any, speed: Speed) -> None:
    from posinterp.machine import store

    store(_speed_path(), _speed_key(config, speed.precision), asdict(speed))


def cached_speed(config: Any, precision: str) -> tuple[Speed, str] | None:
    """(the Speed last measured here for this model shape in `precision` (bf16|fp32|fp16), when), or None."""
    from posinterp.machine import cached

    hit = cached(_speed_path(), _speed_key(config, precision))
    if hit is None:
        return None
    try:
        d = hit["result"]
        conv = {k: {int(t): float(v) for t, v in d.get(k, {}).items()} for k in ("forward", "train", "attention")}
        return Speed(d["precision"], conv["forward"], conv["train"], float(d["optimizer_s"]),
                     float(d.get("head_s_per_token", 0.0)), conv["attention"], int(d.get("layers", 0))), hit["measured"]
    except (ValueError, KeyError, TypeError, AttributeError):  # an entry of another shape: measure again
        return None








