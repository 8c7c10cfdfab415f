"""`posinterp run RECIPE`: extend → fine-tune → evaluate → report, skipping the stages whose stamp matches the plan.

    posinterp run recipes/smollm2-16k-cpu.yaml
    posinterp run recipes/smollm2-16k-cpu.yaml --train.steps 20 --dry-run

Rows (`eval.rows`): the original model, plain extrapolation, each method at 0 fine-tune steps (pi,
yarn, ntk, dynamic, llama3) and the equal-budget fine-tunes `<method>_ft` (pi_ft, yarn_ft, ntk_ft, dynamic_ft, llama3_ft,
and nopi_ft: RoPE unchanged, the paper's direct fine-tuning), every one trained with the recipe's one
`train` section: the same data order, steps, seed and settings. The extend method's rows start from
the extended checkpoint; the others apply their method on the fly at the same factor. An `eval.ruler`
section (eval ruler's flags as keys) adds RULER's synthetic tasks to every row, at the passkey lengths unless
it names its own; the report gives each row's effective length, absolute and relative to the original row. An
`eval.summarize` section (eval summarize's flags as keys) has every row summarize the same documents, each cut to
the row's own window, and the report gives each row's ROUGE-1/2/L (`run/summarize_stage.py`); with it, nopi_ft can
train within the original window (`eval.nopi_ft_seq_len`), and `eval.ppl: null` leaves perplexity out.

Every value is checked before anything is written (the recipe's sections when loaded, the rows and
the factor by `plan`). Every stage writes its output atomically into the run folder, then its stamp
(`stage.json`: its settings, inputs and versions, `run/stamps.py`). A re-run skips a stage whose stamp is
the plan's, reruns one that differs and every stage below it, saying why in one line each
(`train (PI): steps 18 → 20, rerunning`), and grows a fine-tune given more steps from its checkpoint. A
crash or Ctrl-C loses at most the stage in progress (and training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from posinterp.atomic import write_json, write_text
from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError
from posinterp.run import stamps, summarize_stage
from posinterp.run.budget import dry_run, fit_or_reuse, parse_budget, print_estimates, stage_estimates
from posinterp.run.inputs import check_data
from posinterp.run.recipe import Recipe, load_recipe
from posinterp.run.ruler_stage import check_prompts
from posinterp.run.stages import Stage, plan, scale

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    recipe: Path = arg(help="recipe YAML (see recipes/)", positional=True)
    dry_run: bool = arg(False, help="resolve model, data, memory estimate, steps and paths; compute nothing")
    force: bool = arg(False, help="recompute every stage, even finished ones")
    budget: str | None = arg(None, help="wall-time budget, e.g. 45m, 2h or 900s: stages are priced from a short "
                                        "probe of this machine and, when they would not fit, RULER samples, passkey "
                                        "trials, evaluated tokens and then fine-tune steps are trimmed (said exactly)")
    estimate: bool = arg(False, help="price every stage from a short measured probe of this machine before running")
    overrides: list = arg([], help="dotted overrides such as --train.steps 50", cli=False)

    @classmethod
    def epilog(cls) -> str:
        """`run --help`'s tail: every recipe key as a dotted override with its default (from the recipe's sections)."""
        from posinterp.run.recipe import override_help

        return override_help()


def pin_precision(recipe: Recipe) -> Recipe:
    """`auto` resolved once, for every stage of the run: the fine-tunes, every evaluation and the time probe
    use one measured choice. (Each stage resolving its own `auto` let a wrong probe cached mid-run, by a busy
    test run, switch the 2026-12-02 demo's evaluations to fp32 while its estimate priced bf16.)"""
    import torch

    from posinterp.evals.common import dtype_name
    from posinterp.machine import choose_precision

    evals = {k: getattr(recipe.eval, k) for k in ("ppl", "passkey", "ruler", "summarize")}
    if "auto" not in (recipe.train.precision, *(c.dtype for c in evals.values() if c is not None)):
        return recipe
    choice = choose_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")
    log.info("precision for every stage: %s (%s)", choice.name, choice.reason)
    train = recipe.train if recipe.train.precision != "auto" else dataclasses.replace(recipe.train, precision=choice.name)
    evals = {k: c if c is None or c.dtype != "auto" else dataclasses.replace(c, dtype=dtype_name(choice.name))
             for k, c in evals.items()}
    return dataclasses.replace(recipe, train=train, eval=dataclasses.replace(recipe.eval, **evals))


def run(cfg: RunConfig | Path | str | None = None, **kwargs) -> dict:
    """Run (or, with dry_run, plan) a recipe; returns the plan or the report's summary.

    A bad value is refused before anything is written: a bad recipe leaves no run folder behind.
    """
    started = time.time()
    cfg = as_config(RunConfig, cfg, kwargs)
    budget = parse_budget(cfg.budget)
    recipe, data = load_recipe(cfg.recipe, cfg.overrides)
    recipe = pin_precision(recipe)
    run_dir = Path(recipe.out)  # a file there was refused with the recipe
    sc = scale(recipe)
    stages = plan(recipe, run_dir, force=cfg.force, sc=sc)
    estimates, trims, speed, fit = {}, [], None, None
    saved = _read_json(run_dir / "estimates.json")
    if cfg.estimate or budget is not None:
        from posinterp.run.estimate import measure_speed

        try:
            speed = measure_speed(recipe.model, precision=recipe.train.precision)
        except PosinterpError as err:  # e.g. a config-only stand-in (the 7B dry run): nothing to time here
            if budget is not None:
                raise PosinterpError(f"--budget needs a model to time on this machine: {err}") from None
            log.info("no time estimate from this machine: %s", err)
    if speed is not None:
        if budget is not None:
            spent = time.time() - started  # the probe and the set-up so far are part of the budget
            log.info("--budget %s: %.0f s spent on the probe; %.1f min left for the stages", cfg.budget, spent,
                     (budget - spent) / 60)
            key = stamps.digest({"budget_s": budget, "recipe": data, "precision": recipe.train.precision})
            recipe, stages, estimates, trims, fit = fit_or_reuse(recipe, run_dir, cfg.force, sc, speed,
                                                                 budget - spent, key, saved.get("fit"))
            again = " (as before with this budget and recipe)" if fit == saved.get("fit") else ""
            for t in trims:
                log.info("--budget %s: trimmed %s%s", cfg.budget, t, again)
        else:
            estimates = stage_estimates(stages, speed, cfg.force)
        print_estimates(estimates, speed, stages)
    planned = stamps.planned(stages)
    status = stamps.statuses(stages, cfg.force, planned)
    if cfg.dry_run:
        return dry_run(recipe, stages, sc, speed, status)
    check_data(recipe, trains=any(stage.name.startswith("train") for stage in stages))
    check_prompts(recipe, [stage for stage in stages if status[stage.name].runs])
    summarize_stage.check(recipe, [stage for stage in stages if status[stage.name].runs])
    run_dir.mkdir(parents=True, exist_ok=True)
    if speed is not None:
        write_json(run_dir / "estimates.json", {"stages": {**saved.get("stages", {}), **estimates},
                                                "speed": speed.as_dict(), "budget_s": budget, "trimmed": trims,
                                                "estimated_total_s": round(sum(estimates.values()), 1),
                                                "fit": fit or saved.get("fit")})
    write_text(run_dir / "recipe.resolved.yaml",
               f"# posinterp run {cfg.recipe} {' '.join(cfg.overrides)}\n"
               + "".join(f"# --budget {cfg.budget} trimmed {t} (the values below are the recipe's, untrimmed)\n"
                         for t in trims)
               + yaml.safe_dump(data, sort_keys=False))
    timings_path = run_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    t_run = time.time()
    for i, stage in enumerate(stages, 1):
        st = status[stage.name]
        if not st.runs:
            log.info("[%d/%d] %s: done (%s)", i, len(stages), stage.name, stage.output)
            continue
        log.info("[%d/%d] %s: %s", i, len(stages), stage.name, st.line() if st.kind != "to run" else stage.describe)
        t0 = time.time()
        run_stage(stage, planned[stage.name], st, estimates.get(stage.name))
        timings[stage.name] = round(time.time() - t0, 1)
        write_json(timings_path, timings)
    from posinterp.run.report import write_report

    summary = write_report(recipe, run_dir, timings, factor=sc.factor)
    log.info("report: %s (stages run now: %.0f s; all stages: %.0f s)", run_dir / "report.md",
             time.time() - t_run, sum(timings.values()))
    return summary


def run_stage(stage: Stage, stamp: dict, st: stamps.Status, price: float | None) -> None:
    """Run one stage over whatever it left (a fine-tune resumes or starts over as `st` says), ETAs starting
    from its `price`; its stamp is written only once it completes."""
    from posinterp.evals.progress import stage_price

    if getattr(stage.config, "checkpoint_dir", None) is not None:
        stage.config = stamps.start_fine_tune(stage, stamp, st)
    else:
        stage.config = dataclasses.replace(stage.config, force=True)  # replaces an output that no longer matches
    with stage_price(price):
        stage.run()
    stamps.write(stage.output, stamp)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
