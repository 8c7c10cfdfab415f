"""Expected time at the start and an ETA while a long verb runs (eval ppl, passkey, original, summarize,
theory heads; `train` has its own progress bar).

At the start: the expected time, the prior. Inside `posinterp run` that is the stage's price
(`run/budget.py`, passed down by `stage_price`) less what the stage spent before its first unit (loading);
outside it, the time this machine's cached stage probe (`posinterp.speed.cached_speed`, written by
`run --estimate`/`--budget`) prices the units at; with neither, there is no prior and the line says the
time is measured from the first unit.

While running: one line per unit with the elapsed time and the ETA, the remaining weight (each unit's cost,
e.g. tokens or a priced forward) at a blended pace. With f the fraction of the weight done, the pace is
(1 − f)·prior pace + f·observed pace (seconds per unit of weight): the first ETA is the price, not an
extrapolation from the first unit (which pays the warm-up, and is often the cheapest), and the observed
pace takes over as the work gets done. Without a prior, the observed pace alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def clock(seconds: float) -> str:
    """62 → '1m02s', 3700 → '1h01m'."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def speed_for(model: Any, precision: str | None = None) -> tuple[Any, str] | None:
    """(Speed, when measured) cached here for this loaded model's shape and dtype, or None."""
    import torch

    from posinterp.speed import cached_speed

    if precision is None:
        dtype = next(model.parameters()).dtype
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return cached_speed(model.config, precision)


@dataclass
class _Price:
    seconds: float
    since: float
    taken: bool = False


_PRICE: ContextVar[_Price | None] = ContextVar("posinterp_stage_price", default=None)


@contextmanager
def stage_price(seconds: float | None) -> Iterator[None]:
    """Within it, the first enabled `Progress` takes `seconds` (the stage's price, from its start now) as its
    prior; quiet bars (the evaluations during a fine-tune) and later ones do not. `None`: no price."""
    token = _PRICE.set(None if seconds is None else _Price(float(seconds), time.perf_counter()))
    try:
        yield
    finally:
        _PRICE.reset(token)


def _stage_prior(now: float) -> tuple[float, str] | None:
    """(seconds, where from) of the running stage's price left at `now`, once per stage."""
    price = _PRICE.get()
    if price is None or price.taken:
        return None
    price.taken = True
    spent = now - price.since
    if price.seconds - spent <= 0:
        return None
    return price.seconds - spent, f"the stage's price in this run, {clock(price.seconds)}, less {clock(spent)} spent " \
                                  "before its first unit"


def priced(what: str, model: Any, units: list, price: Any, fallback: Any, enabled: bool = True,
           note: str = "") -> Progress:
    """A Progress over `units`, each weighted by `price(speed, unit)` seconds from the stage probe cached here
    for `model` (and the total announced as the expected time), or by `fallback(unit)` without one."""
    hit = speed_for(model) if enabled else None
    if hit is None:
        return Progress(what, [fallback(u) for u in units], enabled=enabled)
    speed, when = hit
    weights = [price(speed, u) for u in units]
    return Progress(what, weights, sum(weights), f"priced by the stage probe cached here on {when}{note}")


class Progress:
    """`Progress(what, weights)`: one unit per weight; `.done(detail)` after each unit logs elapsed and ETA.
    `expected_s`: the prior for the whole (the stage's price inside `run` replaces it)."""

    def __init__(self, what: str, weights: list[float], expected_s: float | None = None, source: str | None = None,
                 enabled: bool = True) -> None:
        self.what, self.weights, self.enabled = what, [max(1e-9, float(w)) for w in weights], enabled
        self.total, self.finished, self.i = sum(self.weights), 0.0, 0
        self.t0 = time.perf_counter()
        if enabled and self.weights and (stage := _stage_prior(self.t0)) is not None:
            expected_s, source = stage
        self.prior = expected_s if enabled else None
        if enabled and self.weights:
            if expected_s is not None:
                log.info("%s: %d units, expected ≈ %s here (%s)", what, len(self.weights), clock(expected_s), source)
            elif source is not None:
                log.info("%s: %d units (%s)", what, len(self.weights), source)
            else:
                log.info("%s: %d units; no stage probe of this model cached here, so the time is measured from "
                         "the first unit (`posinterp run --estimate` caches one)", what, len(self.weights))

    def done(self, detail: str = "") -> None:
        if self.i >= len(self.weights):
            return
        self.finished += self.weights[self.i]
        self.i += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        eta = self.pace(elapsed) * (self.total - self.finished)
        log.info("%s %d/%d%s: %s elapsed, ETA %s", self.what, self.i, len(self.weights),
                 f" ({detail})" if detail else "", clock(elapsed), clock(eta))

    def pace(self, elapsed: float) -> float:
        """Seconds per unit of weight: the observed pace, blended with the prior's by the fraction done."""
        observed = elapsed / self.finished
        if self.prior is None:
            return observed
        done = self.finished / self.total
        return (1 - done) * self.prior / self.total + done * observed
