"""Expected time at the start and an ETA while a long verb runs (eval ppl, passkey, original, summarize,
theory heads; `train` has its own progress bar).

At the start: the time this machine's cached stage probe (`posinterp.speed.cached_speed`, written by
`run --estimate`/`--budget`) prices the work at, or, with no probe here, that the time is measured from
the first unit. While running: one line per unit with the elapsed time and the ETA, the remaining work's
weight (each unit's cost, e.g. tokens or a priced forward) at the pace measured so far.
"""

from __future__ import annotations

import logging
import time
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
    """`Progress(what, weights)`: one unit per weight; `.done(detail)` after each unit logs elapsed and ETA."""

    def __init__(self, what: str, weights: list[float], expected_s: float | None = None, source: str | None = None,
                 enabled: bool = True) -> None:
        self.what, self.weights, self.enabled = what, [max(1e-9, float(w)) for w in weights], enabled
        self.total, self.finished, self.i = sum(self.weights), 0.0, 0
        self.t0 = time.perf_counter()
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
        eta = elapsed / self.finished * (self.total - self.finished)
        log.info("%s %d/%d%s: %s elapsed, ETA %s", self.what, self.i, len(self.weights),
                 f" ({detail})" if detail else "", clock(elapsed), clock(eta))
