"""`posinterp run RECIPE`: extend → fine-tune → evaluate → report, skipping finished stages.

    posinterp run recipes/smollm2-16k-cpu.yaml
    posinterp run recipes/smollm2-16k-cpu.yaml --train.steps 20 --dry-run

Rows (`eval.rows`): the original model, plain extrapolation, each method at 0 fine-tune steps (pi,
yarn, ntk, dynamic) and the equal-budget fine-tunes `<method>_ft` (pi_ft, yarn_ft, ntk_ft, dynamic_ft,
and nopi_ft: RoPE unchanged, the paper's direct fine-tuning), every one trained with the recipe's one
`train` section: the same data order, steps, seed and settings. The extend method's rows start from
the extended checkpoint; the others apply their method on the fly at the same factor.

Every value is checked before anything is written (the recipe's sections when loaded, the rows and
the factor by `plan`). Every stage writes its output atomically into the run folder, so a stage
whose output exists is complete and is skipped on a re-run; a crash or Ctrl-C loses at most the
stage in progress (and training resumes from its last checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from posinterp.atomic import write_json, write_text
from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError
from posinterp.recipe import FINE_TUNED, METHOD_TITLES, ROW_TITLES, Recipe, fine_tune_dir, load_recipe

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    recipe: Path = arg(help="recipe YAML (see recipes/)", positional=True)
    dry_run: bool = arg(False, help="resolve model, data, memory estimate, steps and paths; compute nothing")
    force: bool = arg(False, help="recompute every stage, even finished ones")
    budget: str | None = arg(None, help="wall-time budget, e.g. 45m, 2h or 900s: stages are priced from a short "
                                        "probe of this machine and, when they would not fit, passkey trials, "
                                        "evaluated tokens and then fine-tune steps are trimmed (said exactly)")
    estimate: bool = arg(False, help="price every stage from a short measured probe of this machine before running")
    overrides: list = arg([], help="dotted overrides such as --train.steps 50", cli=False)

    @classmethod
    def epilog(cls) -> str:
        """`run --help`'s tail: every recipe key as a dotted override with its default (from the recipe's sections)."""
        from posinterp.recipe import override_help

        return override_help()


@dataclass
class Stage:
    name: str
    output: Path
    action: Callable[[], object]
    describe: str
    config: Any = None
    """The verb's config dataclass the action runs with."""


@dataclass(frozen=True)
class Scale:
    """The recipe's extension, derived once: L, s, and the unextended model's configured window."""

    original_length: int
    factor: float
    model_window: int

    @property
    def target_length(self) -> int:
        return int(round(self.original_length * self.factor))

    def rope(self, method: str) -> str:
        """`--rope` for `method` at this factor (`yarn:2`), with enough digits that s·L is the target again."""
        return f"{method}:{self.factor:.12g}"


def scale(recipe: Recipe) -> Scale:
    """L from extend.original_length or the model's config; s from extend.factor or target_length / L."""
    from posinterp import models

    prep = models.prepare(recipe.model, original_length=recipe.extend.original_length)
    L, target = prep.original_length, recipe.extend.target_length
    if target is not None and int(target) <= L:
        raise PosinterpError(f"extend.target_length {target} must be larger than the original window {L}; "
                             f"e.g. extend.target_length {2 * L}")
    factor = int(target) / L if target is not None else float(recipe.extend.factor)
    return Scale(L, factor, prep.window)


@dataclass(frozen=True)
class Row:
    """One row of the table: the model its evals load, with which --rope, after which fine-tune."""

    name: str
    model: str
    rope: str = "none"
    beyond: bool = False
    """Evaluated beyond its configured window on purpose (plain extrapolation)."""
    original_length: int | None = None
    train: Any = None
    """The TrainConfig of the fine-tune that writes `model` (`<method>_ft` rows)."""


def make_row(recipe: Recipe, name: str, run_dir: Path, sc: Scale, force: bool = False) -> Row:
    """Row `name`: the extend method's rows use the extended checkpoint, other methods are applied on
    the fly at the same factor, and every `<method>_ft` row fine-tunes with the same recipe.train."""
    extended, given_L = str(run_dir / "extended"), recipe.extend.original_length
    if name == "original":
        return Row(name, recipe.model)
    if name == "extrapolation":
        return Row(name, recipe.model, "none", beyond=True)
    if name not in FINE_TUNED:  # a method with 0 fine-tune steps
        if name == recipe.extend.method:
            return Row(name, extended)
        return Row(name, recipe.model, sc.rope(name), original_length=given_L)
    method = FINE_TUNED[name]
    start, rope = recipe.model, "none"
    if method == recipe.extend.method:
        start = extended
    elif method != "none":
        rope = sc.rope(method)
    window = sc.model_window if method == "none" else sc.target_length
    seq_len = int(recipe.train.seq_len or window)
    if seq_len > window and method != "none":
        raise PosinterpError(f"train.seq_len {seq_len} exceeds the window {window} of row {name} (×{sc.factor:g} "
                             f"of {sc.original_length}); lower train.seq_len or raise extend.factor")
    # no PI past the window is the paper's direct fine-tuning: RoPE unchanged, the window raised to seq_len
    train = dataclasses.replace(recipe.train, model=start, out=run_dir / fine_tune_dir(name), rope=rope,
                                original_length=given_L if rope != "none" else None, checkpoint_dir=None,
                                allow_beyond_window=seq_len > window, resume=not force, force=force)
    return Row(name, str(train.out), "none", beyond=method == "none", train=train)


def plan(recipe: Recipe, run_dir: Path, force: bool = False, sc: Scale | None = None) -> list[Stage]:
    """The stages, in order, each with the config it runs (built and checked now) and its output."""
    from posinterp.evals.passkey import passkey
    from posinterp.evals.perplexity import perplexity, strides_for
    from posinterp.extend import extend
    from posinterp.train import train

    sc = sc or scale(recipe)
    rows = [make_row(recipe, name, run_dir, sc, force) for name in recipe.eval.rows]
    ext = dataclasses.replace(recipe.extend, model=recipe.model, out=run_dir / "extended", force=True)
    stages = []
    if any(str(ext.out) in (row.model, getattr(row.train, "model", None)) for row in rows):
        stages.append(Stage("extend", ext.out, _bind(extend, ext),
                            f"extend {recipe.model} ×{sc.factor:g} ({ext.method})", ext))
    for row in rows:
        if row.train is not None:
            method = FINE_TUNED[row.name]
            how = "without PI (RoPE unchanged)" if method == "none" else f"with {METHOD_TITLES[method]}"
            stages.append(Stage(f"train ({METHOD_TITLES[method]})", row.train.out, _bind(train, row.train),
                                f"fine-tune {how}, same steps and data: {_train_summary(recipe)}", row.train))
    windows = sorted(recipe.eval.windows)
    lengths = sorted(recipe.eval.passkey_lengths or windows)
    stride_of = strides_for(windows, recipe.eval.ppl.stride)
    for row in rows:
        row_windows = [w for w in windows if row.name != "original" or w <= sc.original_length]
        row_lengths = [n for n in lengths if row.name != "original" or n <= sc.original_length]
        common = {"model": row.model, "rope": row.rope, "allow_beyond_window": row.beyond,
                  "original_length": row.original_length, "force": force}
        out = run_dir / "eval" / row.name
        if row_windows:
            cfg = dataclasses.replace(recipe.eval.ppl, out=out / "ppl", windows=",".join(map(str, row_windows)),
                                      stride=",".join(str(stride_of[w]) for w in row_windows), **common)
            stages.append(Stage(f"ppl {row.name}", cfg.out, _bind(perplexity, cfg),
                                f"perplexity of {ROW_TITLES[row.name]} at {row_windows}", cfg))
        if row_lengths and recipe.eval.passkey is not None:
            cfg = dataclasses.replace(recipe.eval.passkey, out=out / "passkey",
                                      lengths=",".join(map(str, row_lengths)), **common)
            stages.append(Stage(f"passkey {row.name}", cfg.out, _bind(passkey, cfg),
                                f"passkey of {ROW_TITLES[row.name]} at {row_lengths}", cfg))
    return stages


def _bind(fn: Callable[[Any], object], cfg: Any) -> Callable[[], object]:
    return lambda: fn(cfg)


def _train_summary(recipe: Recipe) -> str:
    keys = ("steps", "seq_len", "batch_size", "grad_accum", "lr", "data")
    given = recipe.given.get("train") or {}
    return ", ".join(f"{k}={getattr(recipe.train, k)}" for k in keys if k in given) or "defaults"


def _done(stage: Stage) -> bool:
    out = stage.output
    return out.is_dir() and any(out.iterdir())


def parse_budget(text: str | None) -> float | None:
    """`45m`, `2h`, `900s` or `900` → seconds; refuses anything else in one line."""
    if text is None or str(text).strip() == "":
        return None
    raw = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        value = float(raw[:-1]) * units[raw[-1]] if raw[-1] in units else float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise PosinterpError(f"--budget {text!r}: give a positive duration such as 45m, 2h or 900s")
    return value


def stage_estimates(stages: list[Stage], speed: Any, force: bool = False) -> dict[str, float]:
    """Seconds each stage still to run (all with `force`) should take here, priced from the measured `speed`."""
    from posinterp import estimate, models
    from posinterp.corpus import load_documents
    from posinterp.evals.common import parse_lengths
    from posinterp.evals.perplexity import strides_for

    out: dict[str, float] = {}
    tokens_of: dict[tuple, list[int]] = {}
    tokenizer = None
    for s in stages:
        if _done(s) and not force:
            continue
        cfg = s.config
        if s.name == "extend":
            out[s.name] = estimate.LOAD_S  # measured 4.2–4.8 s for SmolLM2 (load, configure, write)
        elif s.name.startswith("train ("):
            seq_len = int(cfg.seq_len or models.prepare(cfg.model, cfg.rope_spec, cfg.original_length).window)
            sec = estimate.train_seconds(speed, steps=cfg.steps, seq_len=seq_len, batch_size=cfg.batch_size,
                                         grad_accum=cfg.grad_accum)
            if cfg.eval_every:
                evals = cfg.steps // cfg.eval_every + 1
                lengths = parse_lengths(cfg.eval_lengths, "--eval-lengths") if cfg.eval_lengths else [seq_len]
                per = estimate.passkey_seconds(speed, lengths=lengths, trials=cfg.eval_trials) - estimate.LOAD_S
                per += estimate.ppl_seconds(speed, doc_tokens=[cfg.eval_ppl_tokens],
                                            windows={seq_len: max(1, seq_len // 2)}) - estimate.LOAD_S
                from posinterp.evals.during import heads_length
                from posinterp.theory_heads import TRIALS

                heads_len = heads_length(cfg, seq_len)
                per += (2 + TRIALS) * speed.forward_s(heads_len) if heads_len else 0.0  # text, repeat, passkey probes
                sec += evals * per
            out[s.name] = sec
        elif s.name.startswith("ppl "):
            key = (cfg.data, cfg.split, cfg.text_field, cfg.max_docs, cfg.max_tokens)
            if key not in tokens_of:
                if tokenizer is None:
                    tokenizer = models.load_tokenizer(models.dense(models.resolve(stages[0].config.model)))
                docs = load_documents(cfg.data, split=cfg.split, text_field=cfg.text_field, limit=cfg.max_docs)
                tokens_of[key] = [min(len(tokenizer(d.text)["input_ids"]), cfg.max_tokens or 1 << 62) for d in docs]
            sizes = parse_lengths(cfg.windows, "--windows")
            out[s.name] = estimate.ppl_seconds(speed, doc_tokens=tokens_of[key],
                                               windows=strides_for(sizes, cfg.stride))
        elif s.name.startswith("passkey "):
            out[s.name] = estimate.passkey_seconds(speed, lengths=parse_lengths(cfg.lengths), trials=cfg.trials,
                                                   new_tokens=cfg.max_new_tokens)
    return out


MIN_STEPS = 5
"""The fewest fine-tune steps a `--budget` trims to."""


def fit_budget(recipe: Recipe, run_dir: Path, force: bool, sc: Scale, speed: Any, budget: float
               ) -> tuple[Recipe, list[Stage], dict[str, float], list[str]]:
    """Trim the recipe until its stages fit `budget` seconds: passkey trials first (down to 1), then the
    perplexity tokens (down to one slide of the longest window, then to one window of the longest size), then
    fine-tune steps (down to `MIN_STEPS`): the fine-tune is what the comparison is about, so it goes last.
    When even that is over the budget, the smallest plan is returned and one line says how long it will
    take: a budget never refuses to run (the README's `make demo` is a budget run).
    Returns the recipe, its stages, their estimates and one sentence per trim."""
    trims: list[str] = []

    def priced(r: Recipe) -> tuple[list[Stage], dict[str, float]]:
        stages = plan(r, run_dir, force=force, sc=sc)
        return stages, stage_estimates(stages, speed, force)

    stages, est = priced(recipe)
    if sum(est.values()) <= budget:
        return recipe, stages, est, trims
    pk = recipe.eval.passkey
    if pk is not None and pk.trials > 1:
        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, passkey=dataclasses.replace(
            pk, trials=1)))
        trims.append(f"passkey trials {pk.trials} → 1 per length")
        stages, est = priced(recipe)
    longest = max(recipe.eval.windows)
    # perplexity text: first one slide of the longest window, then that window alone
    for tokens, what in ((longest + min(longest // 4, 4096), ""), (longest, f": one window at {longest}")):
        ppl = recipe.eval.ppl
        if sum(est.values()) > budget and (ppl.max_tokens is None or ppl.max_tokens > tokens):
            recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, ppl=dataclasses.replace(
                ppl, max_tokens=tokens, max_docs=1)))
            trims.append(f"perplexity text → the first {tokens} tokens of one document{what} (was "
                         f"{ppl.max_tokens or 'whole'} tokens × {ppl.max_docs or 'all'} documents)")
            stages, est = priced(recipe)
    steps = recipe.train.steps
    for _ in range(8):  # the proportional guess, then corrections: int() rounding and per-row costs can leave a rest
        over = sum(est.values()) - budget
        train_s = sum(v for k, v in est.items() if k.startswith("train ("))
        current = recipe.train.steps
        if over <= 0 or train_s <= 0 or current <= MIN_STEPS:
            break
        new = max(MIN_STEPS, min(current - 1, math.floor(current * (1 - over / train_s))))
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=new))
        stages, est = priced(recipe)
    if recipe.train.steps < steps:
        trims.append(f"fine-tune steps {steps} → {recipe.train.steps} (every fine-tuned row, the same)")
    if sum(est.values()) > budget:
        # the README's own command must run: the smallest plan runs, and says so in one line
        log.warning("--budget %.1f min: nothing left to trim; the smallest plan is estimated at %.1f min here, "
                    "and it runs (drop rows with --eval.rows [...] or windows with --eval.windows [...] to go faster)",
                    budget / 60, sum(est.values()) / 60)
    return recipe, stages, est, trims


def _print_estimates(est: dict[str, float], speed: Any, stages: list[Stage]) -> None:
    def fmt(points: dict) -> str:
        return ", ".join(f"{k}: {v:.2f} s" for k, v in points.items())

    print(f"estimate on this machine ({speed.precision}; measured forward {fmt(speed.forward)}; train micro-step "
          f"{fmt(speed.train)} + optimizer {speed.optimizer_s:.2f} s):")
    for s in stages:
        if s.name in est:
            print(f"  {s.name:<22} ≈ {est[s.name] / 60:6.1f} min")
    print(f"  {'all stages':<22} ≈ {sum(est.values()) / 60:6.1f} min")


def dry_run(recipe: Recipe, stages: list[Stage], sc: Scale, speed: Any = None) -> dict:
    """Print the plan: model, data, memory estimate, steps and outputs; compute nothing.

    The time per step comes from this machine: `speed` measured now (--estimate), else the last probe of
    this model cached here; with neither (another machine's plan, a config-only stand-in), from the
    recipe's assumed launch.peak_tflops × launch.mfu, and the line says so."""
    from posinterp import corpus, models
    from posinterp.estimate import cached_speed, estimate
    from posinterp.rope import RopeSpec

    prep = models.prepare(recipe.model, RopeSpec(recipe.extend.method, sc.factor), sc.original_length)
    ref, config, info = prep.ref, prep.config, prep.rope_info
    tr, dist = recipe.train, recipe.launch
    seq_len = int(tr.seq_len or info["target_length"])
    gpus = int(dist.get("gpus", 1))
    est = estimate(config, seq_len=seq_len, micro_batch=tr.batch_size, grad_accum=tr.grad_accum, steps=tr.steps,
                   gpus=gpus, sharded=bool(dist.get("sharded", gpus > 1)), checkpointing=tr.checkpointing != "off",
                   lora=tr.lora, loss_chunk=tr.loss_chunk,
                   peak_tflops=float(dist.get("peak_tflops", 989.0)), mfu=float(dist.get("mfu", 0.4)))
    try:
        docs = corpus.load_documents(str(tr.data), split=tr.split, limit=None)
        data_line = f"{corpus.describe(str(tr.data), tr.split)}: {len(docs)} documents, " \
                    f"{sum(len(d.text) for d in docs) / 1e6:.1f} M characters"
    except PosinterpError as err:
        data_line = f"{tr.data}: not available here ({err})"
    fine_tunes = sum(1 for s in stages if s.name.startswith("train ("))
    plan_ = {
        "recipe": recipe.name, "model": str(ref.folder / (ref.gguf_file or "")), "architecture": config.model_type,
        "original_length": sc.original_length, "target_length": info["target_length"],
        "rope_parameters": info["rope_parameters"],
        "train": {"steps": tr.steps, "seq_len": seq_len, "micro_batch": tr.batch_size, "grad_accum": tr.grad_accum,
                  "gpus": gpus, "tokens_total": seq_len * tr.batch_size * tr.grad_accum * gpus * tr.steps,
                  "fine_tunes": fine_tunes},
        "data": data_line, "estimate": est.as_dict(),
        "stages": [{"stage": s.name, "output": str(s.output), "what": s.describe,
                    "status": "done" if _done(s) else "to run"} for s in stages],
    }
    print(f"recipe {recipe.name}: {plan_['model']} ({config.model_type}), window {sc.original_length} → "
          f"{info['target_length']}, rope {info['rope_parameters']}")
    print(f"data: {data_line}")
    print(f"train: {tr.steps} steps × {seq_len} tokens × micro-batch {tr.batch_size} × accumulation "
          f"{tr.grad_accum} × {gpus} device(s) = {plan_['train']['tokens_total'] / 1e6:.1f} M tokens per fine-tune, "
          f"{fine_tunes} fine-tune(s)")
    print(f"memory per device ≈ {est.total_gib:.1f} GiB (weights {est.weights_gib:.1f}, grads {est.grads_gib:.1f}, "
          f"Adam {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f}, logits {est.logits_gib:.1f}; "
          f"{est.params / 1e9:.2f} B params{', sharded over ' + str(gpus) if est.sharded else ''})")
    measured, when = (speed, "measured now") if speed is not None else (None, None)
    if measured is None and (hit := cached_speed(config, tr.precision)) is not None:  # `run` pinned auto
        measured, when = hit[0], f"the probe cached here on {hit[1]}"
    if measured is not None and gpus == 1:
        step_s = tr.batch_size * measured.train_step_s(seq_len, tr.grad_accum)
        plan_["time"] = {"seconds_per_step": step_s, "source": f"this machine ({measured.precision}, {when})"}
        print(f"time ≈ {step_s:.3g} s/step, {step_s * tr.steps / 3600:.1f} h for {tr.steps} steps, from this machine's "
              f"measured speed ({measured.precision}; {when})" + (f" (× {fine_tunes} fine-tunes)" if fine_tunes > 1 else ""))
    else:
        plan_["time"] = {"seconds_per_step": est.seconds_per_step, "source": "assumed: the recipe's launch.peak_tflops × launch.mfu"}
        print(f"time ≈ {est.seconds_per_step:.3g} s/step, {est.hours_total:.1f} h for {tr.steps} steps, ASSUMED (not measured "
              f"here): {est.assumptions['mfu']:.0%} MFU of {est.assumptions['peak_tflops_per_device']:g} TFLOP/s per device, "
              f"the recipe's launch.mfu × launch.peak_tflops; --estimate measures this machine"
              + (f" (× {fine_tunes} fine-tunes)" if fine_tunes > 1 else ""))
    for s in plan_["stages"]:
        print(f"  [{s['status']}] {s['stage']:<18} → {s['output']}  ({s['what']})")
    return plan_


def pin_precision(recipe: Recipe) -> Recipe:
    """`auto` resolved once, for every stage of the run: the fine-tunes, every evaluation and the time probe
    use one measured choice. (Each stage resolving its own `auto` let a wrong probe cached mid-run, by a busy
    test run, switch the 2026-12-02 demo's evaluations to fp32 while its estimate priced bf16.)"""
    import torch

    from posinterp.evals.common import dtype_name
    from posinterp.machine import choose_precision

    ppl, pk = recipe.eval.ppl, recipe.eval.passkey
    if "auto" not in (recipe.train.precision, ppl.dtype, pk.dtype if pk is not None else None):
        return recipe
    choice = choose_precision("auto", "cuda" if torch.cuda.is_available() else "cpu")
    log.info("precision for every stage: %s (%s)", choice.name, choice.reason)
    train = recipe.train if recipe.train.precision != "auto" else dataclasses.replace(recipe.train, precision=choice.name)
    ppl = ppl if ppl.dtype != "auto" else dataclasses.replace(ppl, dtype=dtype_name(choice.name))
    if pk is not None and pk.dtype == "auto":
        pk = dataclasses.replace(pk, dtype=dtype_name(choice.name))
    return dataclasses.replace(recipe, train=train, eval=dataclasses.replace(recipe.eval, ppl=ppl, passkey=pk))


def run(cfg: RunConfig | Path | str | None = None, **kwargs) -> dict:
    """Run (or, with dry_run, plan) a recipe; returns the plan or the report's summary.

    A bad value is refused before anything is written: a bad recipe leaves no run folder behind.
    """
    started = time.time()
    cfg = as_config(RunConfig, cfg, kwargs)
    budget = parse_budget(cfg.budget)
    recipe, data = load_recipe(cfg.recipe, cfg.overrides)
    recipe = pin_precision(recipe)
    run_dir = Path(recipe.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise PosinterpError(f"{cfg.recipe}: out {run_dir} exists and is a file; the run folder must be a folder "
                             "(give another out, or --out DIR)")
    sc = scale(recipe)
    stages = plan(recipe, run_dir, force=cfg.force, sc=sc)
    estimates, trims, speed = {}, [], None
    if cfg.estimate or budget is not None:
        from posinterp.estimate import measure_speed

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
            recipe, stages, estimates, trims = fit_budget(recipe, run_dir, cfg.force, sc, speed, budget - spent)
            for t in trims:
                log.info("--budget %s: trimmed %s", cfg.budget, t)
        else:
            estimates = stage_estimates(stages, speed, cfg.force)
        _print_estimates(estimates, speed, stages)
    if cfg.dry_run:
        return dry_run(recipe, stages, sc, speed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if speed is not None:
        previous = json.loads((run_dir / "estimates.json").read_text()) if (run_dir / "estimates.json").is_file() else {}
        write_json(run_dir / "estimates.json", {"stages": {**previous.get("stages", {}), **estimates},
                                                "speed": speed.as_dict(), "budget_s": budget, "trimmed": trims,
                                                "estimated_total_s": round(sum(estimates.values()), 1)})
    write_text(run_dir / "recipe.resolved.yaml",
               f"# posinterp run {cfg.recipe} {' '.join(cfg.overrides)}\n"
               + "".join(f"# --budget {cfg.budget} trimmed {t} (the values below are the recipe's, untrimmed)\n"
                         for t in trims)
               + yaml.safe_dump(data, sort_keys=False))
    timings_path = run_dir / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    t_run = time.time()
    for i, stage in enumerate(stages, 1):
        if _done(stage) and not cfg.force:
            log.info("[%d/%d] %s: done (%s)", i, len(stages), stage.name, stage.output)
            continue
        log.info("[%d/%d] %s: %s", i, len(stages), stage.name, stage.describe)
        t0 = time.time()
        stage.action()
        timings[stage.name] = round(time.time() - t0, 1)
        write_json(timings_path, timings)
    from posinterp.report import write_report

    summary = write_report(recipe, run_dir, timings, factor=sc.factor)
    log.info("report: %s (stages run now: %.0f s; all stages: %.0f s)", run_dir / "report.md",
             time.time() - t_run, sum(timings.values()))
    return summary
