"""The paper's Figure 2: a least-squares fit of attention scores on [0, L] is tame inside and explodes beyond.

    posinterp theory figure2 --out runs/theory
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from posinterp.cli import arg, as_config, to_dict
from posinterp.errors import PosinterpError
from posinterp.theory.bound import check_rope_shape, thetas

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

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
            from posinterp.atomic import check_kind

            check_kind(self.out, "--out", "file")
            check_kind(self.out.with_suffix(".json"), "--out", "file")


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
