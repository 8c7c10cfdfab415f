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
- `measure` (in `posinterp.theory_measure`): the same question on a real model's queries and keys.

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
from posinterp.theory_measure import MeasureConfig, measure

if TYPE_CHECKING:
    import numpy as np

__all__ = ["BoundConfig", "Figure2Config", "MeasureConfig", "bound", "figure2", "measure"]

log = logging.getLogger(__name__)


def check_rope_shape(head_dim: int, base: float, length: int) -> None:
    """Shared validation of (d, c, L), one line naming the flag."""
    if int(head_dim) < 2 or int(head_dim) % 2:
        raise PosinterpError(f"--head-dim {head_dim} must be an even number ≥ 2 (RoPE rotates pairs of dimensions)")
    if not math.isfinite(float(base)) or float(base) <= 1.0:
        raise PosinterpError(f"--base {base} must be a finite number > 1 (θ_j = base^(−2j/d) must decrease); e.g. --base 10000")
    if int(length) < 2:
        raise PosinterpError(f"--length {length} must be at least 2 positions; e.g. --length 2048")


# ---------------------------------------------------------------- the math (pure numpy)

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


# ---------------------------------------------------------------- theory bound

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
            self.out = Path(self.out)


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


# ---------------------------------------------------------------- theory figure2

CUTOFF_SWEEP = (None, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
"""Relative singular-value cut-offs reported next to the chosen one (None = numpy's eps·max(M, N))."""


@dataclass
class Figure2Config:
    head_dim: int = arg(128, help="rotary head dimension d (the paper: 128, LLaMA-7B)")
    base: float = arg(10000.0, help="RoPE base c")
    length: int = arg(2048, help="trained window L: targets at integer s in [0, L]")
    extent: float = arg(4.0, help="evaluate beyond L up to extent·L")
    step: float = arg(0.1, help="grid step between integers inside [0, L] (right panel)")
    rcond: float | None = arg(None, help="relative singular-value cut-off of the least-squares fit "
                                         "(default: numpy's lstsq default, eps·max(M, N))")
    seed: int = arg(0, help="seed of the random targets (uniform in [−1, 1])")
    out: Path | None = arg(None, help="write the three-panel PNG here, and its numbers beside it as .json")

    def __post_init__(self) -> None:
        check_rope_shape(self.head_dim, self.base, self.length)
        self.head_dim, self.base, self.length = int(self.head_dim), float(self.base), int(self.length)
        if not float(self.extent) > 1.0:
            raise PosinterpError(f"--extent {self.extent} must be > 1 (how many windows L to evaluate); e.g. --extent 4")
        if not 0.0 < float(self.step) <= 1.0:
            raise PosinterpError(f"--step {self.step} must be in (0, 1] (the grid between integers); e.g. --step 0.1")
        if self.length / float(self.step) > 2_000_000:
            raise PosinterpError(f"--length {self.length} / --step {self.step} is above 2000000 grid points; raise --step")
        if self.rcond is not None and not 0.0 < float(self.rcond) < 1.0:
            raise PosinterpError(f"--rcond {self.rcond} must be in (0, 1) (a relative singular-value cut-off)")
        if self.out is not None:
            self.out = Path(self.out)
            if self.out.suffix.lower() != ".png":
                raise PosinterpError(f"--out {self.out} must end in .png (the JSON goes beside it)")


def design(s: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Real design matrix [cos(sθ), −sin(sθ)]: a(s) = design(s) @ [Re h; Im h], shape (len(s), d)."""
    import numpy as np

    phase = np.outer(s, theta)
    return np.concatenate([np.cos(phase), -np.sin(phase)], axis=1)


def fit_min_norm(A: np.ndarray, y: np.ndarray, rconds: tuple) -> tuple[list[tuple[np.ndarray, int]], np.ndarray]:
    """Minimum-norm least squares through one SVD (what numpy's lstsq does), per relative cut-off.

    For each rcond keeps σ > rcond·σ_max (None: numpy's default eps·max(M, N)).
    Returns ([(x, rank) per rcond], singular values).
    """
    import numpy as np

    U, sv, Vt = np.linalg.svd(A, full_matrices=False)
    proj = U.T @ y
    fits = []
    for rcond in rconds:
        keep = sv > (np.finfo(float).eps * max(A.shape) if rcond is None else rcond) * sv[0]
        fits.append((Vt[keep].T @ (proj[keep] / sv[keep]), int(keep.sum())))
    return fits, sv


def figure2(cfg: Figure2Config | None = None, **kwargs) -> dict:
    """Fit a(s) to random targets at integer s in [0, L]; evaluate beyond L and between integers."""
    import numpy as np

    from posinterp.versions import versions

    cfg = as_config(Figure2Config, cfg, kwargs)
    L, theta = cfg.length, thetas(cfg.head_dim, cfg.base)
    rng = np.random.default_rng(cfg.seed)
    s_fit = np.arange(L + 1, dtype=float)
    y = rng.uniform(-1.0, 1.0, L + 1)
    A = design(s_fit, theta)  # (L + 1, d)
    s_beyond = np.arange(L, math.floor(cfg.extent * L) + 1, dtype=float)
    s_fine = np.arange(round(L / cfg.step) + 1) * cfg.step
    V_beyond, V_fine = design(s_beyond, theta), design(s_fine, theta)

    def summary(x: np.ndarray, rank: int) -> dict:
        fit, beyond, fine = A @ x, V_beyond @ x, V_fine @ x
        lin = np.interp(s_fine, s_fit, fit)
        k = int(np.abs(beyond).argmax())
        h = x[: len(theta)] + 1j * x[len(theta):]
        return {"rank": rank, "residual_rms": float(np.sqrt(np.mean((fit - y) ** 2))),
                "max_abs_inside_integers": float(np.abs(fit).max()),
                "max_abs_inside_fine": float(np.abs(fine).max()),
                "max_abs_beyond": float(np.abs(beyond[1:]).max()), "beyond_argmax_s": float(s_beyond[k]),
                "max_dev_from_linear_interp_inside": float(np.abs(fine - lin).max()),
                "max_abs_h": float(np.abs(h).max())}

    fits, sv = fit_min_norm(A, y, (cfg.rcond, *CUTOFF_SWEEP))
    sweep = [{"rcond": rc, **summary(*fit)} for rc, fit in zip(CUTOFF_SWEEP, fits[1:])]
    x, rank = fits[0]
    main = summary(x, rank)
    result = {
        "config": to_dict(cfg),
        "unknowns": int(A.shape[1]), "equations": int(A.shape[0]),
        "design_condition_number": float(sv[0] / sv[-1]),
        "target_rms": float(np.sqrt(np.mean(y ** 2))),
        **main,
        "rcond_sweep": sweep,
        "versions": versions(),
    }
    _print_figure2(result)
    if cfg.out is not None:
        from posinterp.atomic import write_json

        _plot_figure2(cfg, s_fit, y, A @ x, s_beyond, V_beyond @ x, s_fine, V_fine @ x, result)
        write_json(cfg.out.with_suffix(".json"), result)
        log.info("wrote %s and %s", cfg.out, cfg.out.with_suffix(".json"))
    return result


def _print_figure2(r: dict) -> None:
    c = r["config"]
    print(f"Figure 2: d={c['head_dim']} c={c['base']:g} L={c['length']} seed={c['seed']}: {r['equations']} targets, "
          f"{r['unknowns']} real unknowns, condition number {r['design_condition_number']:.3g}")
    head = f"{'rcond':>8} {'rank':>4} {'resid rms':>9} {'max|a| in':>9} {'fine':>7} {'|a−lin|':>8} {'max|a| beyond':>13} {'at s':>6} {'max|h|':>9}"
    print(head)
    chosen = c["rcond"]
    for row in r["rcond_sweep"]:
        mark = " *" if row["rcond"] == chosen else ""
        rc = "eps·N" if row["rcond"] is None else f"{row['rcond']:.0e}"
        print(f"{rc:>8} {row['rank']:>4} {row['residual_rms']:>9.4f} {row['max_abs_inside_integers']:>9.3f} "
              f"{row['max_abs_inside_fine']:>7.3f} {row['max_dev_from_linear_interp_inside']:>8.2e} "
              f"{row['max_abs_beyond']:>13.4g} {row['beyond_argmax_s']:>6.0f} {row['max_abs_h']:>9.3g}{mark}")
    print(f"chosen fit (*): max|a| inside {r['max_abs_inside_fine']:.3f} (fine grid), beyond L {r['max_abs_beyond']:.4g}")


def _plot_figure2(cfg: Figure2Config, s_fit, y, fit, s_beyond, beyond, s_fine, fine, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    L = cfg.length
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    ax[0].plot(s_fit, y, ".", ms=2, color="0.6", label="random targets")
    ax[0].plot(s_fit, fit, "r-", lw=0.8, label="least-squares a(s)")
    ax[0].set(title=f"fit on integer s ∈ [0, {L}]", xlabel="relative distance s", ylabel="a(s)", ylim=(-1.2, 1.2))
    ax[0].legend(loc="lower right", fontsize=8)
    ax[1].plot(s_fit, fit, "r-", lw=0.8)
    ax[1].plot(s_beyond, beyond, "r-", lw=0.8)
    ax[1].axvline(L, color="k", ls="--", lw=0.8)
    ax[1].set_yscale("symlog", linthresh=1.0)
    ax[1].set(title=f"extrapolation: max |a| beyond L = {r['max_abs_beyond']:.3g}", xlabel="relative distance s",
              ylabel="a(s) (symlog)")
    # right: 16 units around the largest gap between a(s) and the line through its integer values
    dev = np.abs(fine - np.interp(s_fine, s_fit, fit))
    mid = float(s_fine[dev.argmax()])
    lo = max(0.0, min(math.floor(mid) - 8, L - 16))
    sel = (s_fine >= lo) & (s_fine <= lo + 16)
    ax[2].plot(s_fine[sel], fine[sel], "r-", lw=1.0, label=f"a(s), step {cfg.step:g}")
    ints = (s_fit >= lo) & (s_fit <= lo + 16)
    ax[2].plot(s_fit[ints], fit[ints], "ko", ms=3, label="integer s")
    for s in s_fit[ints]:
        ax[2].axvline(s, color="0.8", ls=":", lw=0.6)
    ax[2].set(title=f"interpolation: s ∈ [{lo:g}, {lo + 16:g}], max |a| inside = {r['max_abs_inside_fine']:.2f}",
              xlabel="relative distance s", ylim=(-1.2, 1.2))
    ax[2].legend(loc="lower right", fontsize=8)
    rc = "eps·N" if cfg.rcond is None else f"{cfg.rcond:g}"
    fig.suptitle(f"Figure 2 recomputed: d={cfg.head_dim}, c={cfg.base:g}, L={L}, seed {cfg.seed}, rcond {rc}", fontsize=10)
    fig.tight_layout()
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.out.with_name(f".{cfg.out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(cfg.out)
