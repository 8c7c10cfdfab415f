"""Price a finished run's stages with this machine's probe now, beside the times the run measured.

    flock /tmp/posinterp-cpu.lock .venv/bin/python bench/estimate_check.py runs/smollm2-16k-cpu \
        --override=--train.steps=10 --out docs/demo/estimate_check.json

Reads the run's recipe.resolved.yaml (plus `--override`s, e.g. the steps a --budget trimmed) and
timings.json, measures `posinterp.run.estimate.measure_speed` afresh, and prints estimated against
measured seconds per stage. For checking a change to the estimate against a run already made;
the run itself writes the same comparison into its report from the probe it took before starting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--override", action="append", default=[], help="dotted recipe override, e.g. --override=--train.steps=10")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from posinterp.run.budget import stage_estimates
    from posinterp.run.estimate import measure_speed
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan, scale

    recipe, _ = load_recipe(args.run_dir / "recipe.resolved.yaml", args.override)
    t0 = time.perf_counter()
    speed = measure_speed(recipe.model, precision=recipe.train.precision)
    probe_s = time.perf_counter() - t0
    est = stage_estimates(plan(recipe, args.run_dir, force=True, sc=scale(recipe)), speed, force=True)
    measured = json.loads((args.run_dir / "timings.json").read_text())
    rows = [(k, est.get(k), v) for k, v in measured.items()]
    print(f"probe {probe_s:.1f} s: {speed.as_dict()}")
    print(f"{'stage':<24}{'estimated s':>12}{'measured s':>12}{'measured/est':>14}")
    for k, e, m in rows:
        print(f"{k:<24}{e:>12.0f}{m:>12.0f}{m / e:>14.2f}" if e else f"{k:<24}{'–':>12}{m:>12.0f}")
    te, tm = sum(e for _, e, _ in rows if e), sum(m for _, e, m in rows if e)
    print(f"{'all stages':<24}{te:>12.0f}{tm:>12.0f}{tm / te:>14.2f}")
    if args.out:
        from posinterp.atomic import write_json

        write_json(args.out, {"command": "bench/estimate_check.py " + " ".join(sys.argv[1:]), "probe_s": probe_s,
                              "speed": speed.as_dict(), "stages": {k: {"estimated_s": e, "measured_s": m}
                                                                   for k, e, m in rows}})


if __name__ == "__main__":
    main()
