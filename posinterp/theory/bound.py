"""Theorem 2.1 and Figure 2 of the PI paper (arXiv 2306.15595, §2.3), recomputed in numpy.

    posinterp theory bound --head-dim 128 --base 10000 --length 2048 --out bound.json
    posinterp theory figure2 --out fig2.png
    posinterp theory measure smollm2-135m --length 16384 --factor 2 --data gutenberg --out runs/measure

Notation (the paper's): the attention score as a function of the relative distance s is
a(s) = Re Σ_{j<d/2} h_j e^{i s θ_j}, θ_j = c^{−2j/d}, with h_j built from a query/key pair.

- `bound`: the interpolation bound on |a(s) − a_lin(s)| between integers, as the paper states it
  (d/(32 ln c) · max|h| on a unit grid) and corrected (1/(8(1 − c^{−4/d})) · max|h|; the proof's step
  c^x ≤ 1 + x ln c for x < 0 is false), the error a worst-case h really attains, the extrapolation
  bound's B(s) = Σ_{k=1}^{d/2} |Σ_{j<k} e^{i s θ_j}| and the ratio of the two bounds.
- `figure2`: a least-squares fit of a(s) to random targets on integer s ∈ [0, L], evaluated beyond
  L and between integers.
- `measure` (in `posinterp.theory.measure`): the same question on a real model's queries and keys.

numpy and matplotlib are imported inside functions, so `posinterp --help` stays fast.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from posinterp.cli import arg, as_config, to_dict
from posinterp.errors import PosinterpError

if TYPE_CHECKING:
    import numpy as np


log = logging.getLogger(__name__)


def check_rope_shape(head_dim: int, base: float, length: int) -> None:
    """Shared validation of (d, c, L), one line naming the flag."""
    if int(head_dim) < 2 or int(head_dim) % 2:
        raise PosinterpError(f"--head-dim {head_dim} must be an even number ≥ 2 (RoPE rotates pairs of dimensions)")
    if not math.isfinite(float(base)) or float(base) <= 1.0:
        raise PosinterpError(f"--base {base} must be a finite number > 1 (θ_j = base^(−2j/d) must decrease); e.g. --base 10000")
    if int(length) < 2:
        raise PosinterpError(f"--length {length} must be at least 2 positions; e.g. --length 2048")


def thetas(head_dim: int, base: float) -> np.ndarray:
    """θ_j = c^(−2j/d), j < d/2: the RoPE frequencies, shape (d/2,)."""
    import numpy as np

    return float(base) ** (-2.0 * np.arange(head_dim // 2) / head_dim)


def scores(h: np.ndarray, theta: np.ndarray, s: np.ndarray) -> np.ndarray:
    """a(s) = Re Σ_j h_j e^{i s θ_j} for every s; h (d/2,) complex → (len(s),)."""
    import numpy as np

    return (np.exp(1j * np.outer(s, theta)) @ h).real


def unit_errors(theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """e_j(t) = e^{i t θ_j} − [(1 − t) + t e^{i θ_j}], t ∈ [0, 1]: (len(t), d/2) complex.

    For any s1 the interpolation error on [s1, s1 + 1] is Re Σ_j h_j e^{i s1 θ_j} e_j(t); the shift
    only rotates h_j, so the worst case over |h_j| ≤ H is H · max_t Σ_j |e_j(t)|.
    """
    import numpy as np

    t = np.asarray(t, dtype=float)[:, None]
    return np.exp(1j * t * theta) - (1 - t) - t * np.exp(1j * theta)


def worst_case_h(theta: np.ndarray) -> np.ndarray:
    """h_j = e^{−i θ_j/2} (|h_j| = 1): a(s) = Σ_j cos((s − ½) θ_j), whose error at s = ½ is Σ_j (1 − cos(θ_j/2)).

    Every term of e_j(½) = e^{iθ_j/2}(1 − cos(θ_j/2)) is turned real and positive, so no h with
    max|h_j| = 1 does worse on a unit grid.
    """
    import numpy as np

    return np.exp(-0.5j * theta)


def interpolation_coefficients(head_dim: int, base: float, grid: int = 2001) -> dict:
    """Unit-grid coefficients k with |a(s) − a_lin(s)| ≤ k · max|h| between consecutive integers.

    - stated: d/(32 ln c), the paper's (its (s − s1)(s2 − s) ≤ 1/4 form of d/(8 ln c)).
    - corrected: 1/(8(1 − c^{−4/d})) — max|a''| ≤ max|h| Σθ_j² ≤ max|h| / (1 − c^{−4/d}), times 1/8.
    - tight_sum: Σ_j θ_j² / 8, the finite sum before the geometric tail is dropped.
    - attained: max_t Σ_j |e_j(t)| (t on a grid of `grid` points, includes ½), what worst_case_h reaches.
    """
    import numpy as np

    d, c = int(head_dim), float(base)
    theta = thetas(d, c)
    t = np.linspace(0.0, 1.0, grid)
    total = np.abs(unit_errors(theta, t)).sum(axis=1)
    return {
        "stated": d / (32.0 * math.log(c)),
        "corrected": 1.0 / (8.0 * (1.0 - c ** (-4.0 / d))),
        "tight_sum": float((theta ** 2).sum() / 8.0),
        "attained": float(total.max()),
        "attained_at_t": float(t[total.argmax()]),
        "attained_closed_form": float((1.0 - np.cos(theta / 2.0)).sum()),
    }


def b_curve(theta: np.ndarray, s_max: int, chunk: int = 8192) -> np.ndarray:
    """B(s) = Σ_{k=1}^{d/2} |Σ_{j<k} e^{i s θ_j}| for integer s = 0 … s_max, shape (s_max + 1,).

    The RoFormer bound (its §3.4.3, Abel summation): |a(s)| ≤ max_j|h_{j+1} − h_j| · B(s) ≤ 2 max|h| · B(s).
    Chunked so long ranges stay within memory: (chunk, d/2) complex at a time.
    """
    import numpy as np

    out = np.empty(s_max + 1)
    for lo in range(0, s_max + 1, chunk):
        s = np.arange(lo, min(lo + chunk, s_max + 1), dtype=float)
        partial = np.cumsum(np.exp(1j * np.outer(s, theta)), axis=1)  # (n, d/2): column k−1 is Σ_{j<k}
        out[lo: lo + len(s)] = np.abs(partial).sum(axis=1)
    return out


@dataclass
class BoundConfig:
    head_dim: int = arg(128, help="rotary head dimension d (even)")
    base: float = arg(10000.0, help="RoPE base c (θ_j = c^(−2j/d))")
    length: int = arg(2048, help="trained window L (sets the default --span)")
    span: int | None = arg(None, help="take min B(s)/d over integer s in [0, span] (default: 2·length)")
    out: Path | None = arg(None, help="write the numbers as JSON to this file")

    def __post_init__(self) -> None:
        check_rope_shape(self.head_dim, self.base, self.length)
        self.head_dim, self.base, self.length = int(self.head_dim), float(self.base), int(self.length)
        if self.span is None:
            self.span = 2 * self.length
        if int(self.span) < 1:
            raise PosinterpError(f"--span {self.span} must be ≥ 1 (the last distance s of the B(s) range)")
        if int(self.span) > 50_000_000:
            raise PosinterpError(f"--span {self.span} is above 50000000 distances; give a smaller --span")
        self.span = int(self.span)
        if self.out is not None:
            from posinterp.atomic import check_kind

            self.out = check_kind(self.out, "--out", "file")


def bound(cfg: BoundConfig | None = None, **kwargs) -> dict:
    """Theorem 2.1's interpolation bound (stated and corrected), B(s), and the bounds' ratio.

    `bound(head_dim=128, base=10000, length=2048)` → dict (also printed; written to `out` as JSON).
    """
    from posinterp.versions import versions

    cfg = as_config(BoundConfig, cfg, kwargs)
    d, c, L = cfg.head_dim, cfg.base, cfg.length
    theta = thetas(d, c)
    coef = interpolation_coefficients(d, c)
    B = b_curve(theta, cfg.span)
    per_d = B / d

    def window_min(lo: int, hi: int) -> dict | None:
        hi = min(hi, cfg.span)
        if lo > hi:
            return None
        i = lo + int(per_d[lo: hi + 1].argmin())
        return {"range": [lo, hi], "min_B_over_d": float(per_d[i]), "at_s": i}

    below = (per_d < 1.0).nonzero()[0]
    b_min = window_min(0, cfg.span)
    # extrapolation bound / interpolation bound = 2·max|h|·B(s) / (k·max|h|) ≥ 2·min B / k
    ratios = {
        "stated_with_B_ge_d": 2.0 * d / coef["stated"],
        "corrected_with_B_ge_d": 2.0 * d / coef["corrected"],
        "attained_with_B_ge_d": 2.0 * d / coef["attained"],
        "stated_with_min_B": 2.0 * d * b_min["min_B_over_d"] / coef["stated"],
        "corrected_with_min_B": 2.0 * d * b_min["min_B_over_d"] / coef["corrected"],
    }
    result = {
        "config": to_dict(cfg),
        "interpolation": {
            "unit_grid_coefficient": coef,
            "general_form_coefficient": {  # |a − a_lin| ≤ k · max|h| · (s − s1)(s2 − s)
                "stated": d / (8.0 * math.log(c)), "corrected": 1.0 / (2.0 * (1.0 - c ** (-4.0 / d)))},
            "stated_denominator_32_ln_c": 32.0 * math.log(c),
            "stated_exceeded_by": coef["attained"] / coef["stated"],
            "corrected_holds": coef["attained"] <= coef["corrected"],
        },
        "extrapolation": {
            "B_definition": "B(s) = sum_{k=1}^{d/2} |sum_{j<k} exp(i s theta_j)|, integer s",
            "B_at_0_over_d": float(per_d[0]),
            "min_over_span": b_min,
            "min_inside_window": window_min(0, L),
            "min_beyond_window_to_2L": window_min(L + 1, 2 * L),
            "first_s_with_B_below_d": int(below[0]) if len(below) else None,
            "count_s_with_B_below_d": int(len(below)),
        },
        "ratio_extrapolation_over_interpolation": ratios,
        "versions": versions(),
    }
    _print_bound(result)
    if cfg.out is not None:
        from posinterp.atomic import write_json

        write_json(cfg.out, result)
        log.info("wrote %s", cfg.out)
    return result


def _print_bound(r: dict) -> None:
    cfg, co = r["config"], r["interpolation"]["unit_grid_coefficient"]
    ex, ra = r["extrapolation"], r["ratio_extrapolation_over_interpolation"]
    m = ex["min_over_span"]
    rows = [
        ("d, c, L", f"{cfg['head_dim']}, {cfg['base']:g}, {cfg['length']}"),
        ("interp. coefficient, stated d/(32 ln c)", f"{co['stated']:.5f}  (= d / {r['interpolation']['stated_denominator_32_ln_c']:.2f})"),
        ("interp. coefficient, corrected 1/(8(1-c^(-4/d)))", f"{co['corrected']:.5f}  (= d / {cfg['head_dim'] / co['corrected']:.2f})"),
        ("worst-case h attains (h_j = e^(-i θ_j/2))", f"{co['attained']:.5f}  at t = {co['attained_at_t']:.3f} "
                                                       f"(stated ×{r['interpolation']['stated_exceeded_by']:.3f})"),
        ("B(0)/d", f"{ex['B_at_0_over_d']:.3f}"),
        (f"min B(s)/d, integer s in [{m['range'][0]}, {m['range'][1]}]", f"{m['min_B_over_d']:.4f}  at s = {m['at_s']}"),
        ("first s with B(s) < d", str(ex["first_s_with_B_below_d"]) if ex["first_s_with_B_below_d"] is not None
         else f"none in [0, {m['range'][1]}]"),
        ("ratio, stated (B ≥ d)", f"{ra['stated_with_B_ge_d']:.2f}"),
        ("ratio, corrected (B ≥ d)", f"{ra['corrected_with_B_ge_d']:.2f}"),
        ("ratio, corrected with min B", f"{ra['corrected_with_min_B']:.2f}"),
        ("ratio, stated with min B", f"{ra['stated_with_min_B']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
