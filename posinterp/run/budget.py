"""What a run will cost on this machine, and fitting it into `--budget`: per-stage estimates, the trims
(RULER samples, passkey trials, perplexity text, summarized documents, fine-tune steps) and `--dry-run`'s table.

Only the stages still to run are priced (`run/stamps.py` says which), and a fine-tune that continues from
a checkpoint only for its remaining steps. The trims a budget chose are kept in the run folder
(`estimates.json`'s `fit`): the same recipe under the same budget reuses them instead of fitting again
from a new probe, so a budget-trimmed stage stays done for that budget.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.run import summarize_stage
from posinterp.run.recipe import Recipe
from posinterp.run.stages import Scale, Stage, plan
from posinterp.run.stamps import Status, statuses

log = logging.getLogger(__name__)


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


def stage_estimates(stages: list[Stage], speed: Any, force: bool = False,
                    status: dict[str, Status] | None = None) -> dict[str, float]:
    """Seconds each stage still to run (all with `force`) should take here, priced from the measured `speed`;
    a fine-tune resuming from a checkpoint for the steps it has left."""
    from posinterp.data.corpus import load_documents
    from posinterp.evals.common import parse_lengths
    from posinterp.evals.perplexity import strides_for
    from posinterp.evals.ruler import parse_tasks
    from posinterp.model import loader, refs
    from posinterp.run import estimate

    out: dict[str, float] = {}
    tokens_of: dict[tuple, list[int]] = {}
    tokenizer = None
    status = status if status is not None else statuses(stages, force)
    for s in stages:
        if not status[s.name].runs:
            continue
        cfg = s.config
        if s.name == "extend":
            out[s.name] = estimate.LOAD_S  # measured 4.2–4.8 s for SmolLM2 (load, configure, write)
        elif s.name.startswith("train ("):
            seq_len = int(cfg.seq_len or s.window or loader.prepare(cfg.model, cfg.rope_spec, cfg.original_length).window)
            left = cfg.steps - status[s.name].from_step
            examples = summarize_stage.example_tokens(cfg, seq_len, stages[0].config.model) if cfg.task == "summarize" \
                else None  # one unpadded example per sequence: priced at the data's own lengths
            sec = estimate.train_seconds(speed, steps=left, seq_len=seq_len, batch_size=cfg.batch_size,
                                         grad_accum=cfg.grad_accum, example_tokens=examples)
            if cfg.eval_every:
                evals = cfg.steps // cfg.eval_every + 1 - status[s.name].from_step // cfg.eval_every
                lengths = parse_lengths(cfg.eval_lengths, "--eval-lengths") if cfg.eval_lengths else [seq_len]
                per = estimate.passkey_seconds(speed, lengths=lengths, trials=cfg.eval_trials) - estimate.LOAD_S
                per += estimate.ppl_seconds(speed, doc_tokens=[cfg.eval_ppl_tokens],
                                            windows={seq_len: max(1, seq_len // 2)}) - estimate.LOAD_S
                from posinterp.theory.heads import TRIALS
                from posinterp.train.during import heads_length

                heads_len = heads_length(cfg, seq_len)
                per += (2 + TRIALS) * speed.forward_s(heads_len) if heads_len else 0.0  # text, repeat, passkey probes
                sec += evals * per
            out[s.name] = sec
        elif s.name.startswith("ppl "):
            key = (cfg.data, cfg.split, cfg.text_field, cfg.max_docs, cfg.max_tokens)
            if key not in tokens_of:
                if tokenizer is None:
                    tokenizer = refs.load_tokenizer(refs.dense(refs.resolve(stages[0].config.model)))
                docs = load_documents(cfg.data, split=cfg.split, text_field=cfg.text_field, limit=cfg.max_docs)
                tokens_of[key] = [min(len(tokenizer(d.text)["input_ids"]), cfg.max_tokens or 1 << 62) for d in docs]
            sizes = parse_lengths(cfg.windows, "--windows")
            out[s.name] = estimate.ppl_seconds(speed, doc_tokens=tokens_of[key],
                                               windows=strides_for(sizes, cfg.stride))
        elif s.name.startswith("passkey "):
            out[s.name] = estimate.passkey_seconds(speed, lengths=parse_lengths(cfg.lengths), trials=cfg.trials,
                                                   new_tokens=cfg.max_new_tokens)
        elif s.name.startswith("ruler "):
            out[s.name] = estimate.ruler_seconds(speed, lengths=parse_lengths(cfg.lengths), tasks=parse_tasks(cfg.tasks),
                                                 samples=cfg.samples, max_new_tokens=cfg.max_new_tokens)
        elif s.name.startswith("summarize "):
            out[s.name] = summarize_stage.stage_seconds(s, speed, stages[0].config.model)
    return out


MIN_STEPS = 5
"""The fewest fine-tune steps a `--budget` trims to."""


def fit_budget(recipe: Recipe, run_dir: Path, force: bool, sc: Scale, speed: Any, budget: float
               ) -> tuple[Recipe, list[Stage], dict[str, float], list[str]]:
    """Trim the recipe until its stages fit `budget` seconds: RULER samples first (down to 1 per task and length),
    then passkey trials (down to 1), then the perplexity tokens (down to one slide of the longest window, then to one window of the longest size), then
    the summarized documents (down to `summarize_stage.MIN_DOCUMENTS`), then fine-tune steps (down to `MIN_STEPS`):
    the fine-tune is what the comparison is about, so it goes last.
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
    ru = recipe.eval.ruler
    if ru is not None and ru.samples != 1:
        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, ruler=dataclasses.replace(
            ru, samples=1)))
        trims.append(f"RULER samples {ru.samples or 'by length (10 up to 4096 tokens, 5 above)'} → 1 per task "
                     "and length")
        stages, est = priced(recipe)
    pk = recipe.eval.passkey
    if sum(est.values()) > budget and pk is not None and pk.trials > 1:
        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, passkey=dataclasses.replace(
            pk, trials=1)))
        trims.append(f"passkey trials {pk.trials} → 1 per length")
        stages, est = priced(recipe)
    longest = max(recipe.eval.windows)
    # perplexity text: first one slide of the longest window, then that window alone
    for tokens, what in ((longest + min(longest // 4, 4096), ""), (longest, f": one window at {longest}")):
        ppl = recipe.eval.ppl
        if sum(est.values()) > budget and ppl is not None and (ppl.max_tokens is None or ppl.max_tokens > tokens):
            recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, ppl=dataclasses.replace(
                ppl, max_tokens=tokens, max_docs=1)))
            trims.append(f"perplexity text → the first {tokens} tokens of one document{what} (was "
                         f"{ppl.max_tokens or 'whole'} tokens × {ppl.max_docs or 'all'} documents)")
            stages, est = priced(recipe)
    recipe, fewer, est, said = summarize_stage.trim(recipe, est, budget, stages[0].config.model, priced)
    if fewer is not None:
        stages = fewer
        trims.append(said)
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


TRIMMABLE = ("train.steps", "eval.passkey.trials", "eval.ppl.max_tokens", "eval.ppl.max_docs", "eval.ruler.samples",
             "eval.summarize.limit")
"""The recipe values a budget trims, as dotted keys."""


def _get(recipe: Recipe, key: str) -> Any:
    obj: Any = recipe
    for part in key.split("."):
        obj = getattr(obj, part) if obj is not None else None
    return obj


def _set(obj: Any, parts: list[str], value: Any) -> Any:
    inner = getattr(obj, parts[0])
    if inner is None:  # no passkey or ruler section: nothing to trim there
        return obj
    return dataclasses.replace(obj, **{parts[0]: value if len(parts) == 1 else _set(inner, parts[1:], value)})


def trimmed_values(recipe: Recipe) -> dict[str, Any]:
    """The values of `TRIMMABLE` in this (trimmed) recipe."""
    return {key: _get(recipe, key) for key in TRIMMABLE}


def with_values(recipe: Recipe, values: dict[str, Any]) -> Recipe:
    """The recipe with the trimmed values a fit chose before."""
    for key, value in values.items():
        if key in TRIMMABLE:
            recipe = _set(recipe, key.split("."), value)
    return recipe


def fit_or_reuse(recipe: Recipe, run_dir: Path, force: bool, sc: Scale, speed: Any, budget: float, key: str,
                 saved: dict | None) -> tuple[Recipe, list[Stage], dict[str, float], list[str], dict]:
    """`fit_budget`, or the fit `saved` in the run folder when its `key` (the budget and the recipe) is this
    run's: a new probe or fewer stages left must not trim a budget's plan differently (its stages would
    rerun). Returns what `fit_budget` does, and the fit to save."""
    if saved and saved.get("key") == key:
        recipe = with_values(recipe, saved["values"])
        stages = plan(recipe, run_dir, force=force, sc=sc)
        return recipe, stages, stage_estimates(stages, speed, force), list(saved["trims"]), saved
    recipe, stages, est, trims = fit_budget(recipe, run_dir, force, sc, speed, budget)
    return recipe, stages, est, trims, {"key": key, "values": trimmed_values(recipe), "trims": trims}


def print_estimates(est: dict[str, float], speed: Any, stages: list[Stage]) -> None:
    def fmt(points: dict) -> str:
        return ", ".join(f"{k}: {v:.2f} s" for k, v in points.items())

    print(f"estimate on this machine ({speed.precision}; measured forward {fmt(speed.forward)}; train micro-step "
          f"{fmt(speed.train)} + optimizer {speed.optimizer_s:.2f} s):")
    for s in stages:
        if s.name in est:
            print(f"  {s.name:<22} ≈ {est[s.name] / 60:6.1f} min")
    print(f"  {'all stages':<22} ≈ {sum(est.values()) / 60:6.1f} min")


def dry_run(recipe: Recipe, stages: list[Stage], sc: Scale, speed: Any = None,
            status: dict[str, Status] | None = None) -> dict:
    """Print the plan: model, data, memory estimate, steps and outputs, and what `run` would do with each
    stage (done, to run, or why it reruns or resumes: the same line `run` logs); compute nothing.

    The time per step comes from this machine: `speed` measured now (--estimate), else the last probe of
    this model cached here; with neither (another machine's plan, a config-only stand-in), from the
    recipe's assumed launch.peak_tflops × launch.mfu, and the line says so."""
    from posinterp.data import corpus
    from posinterp.model import loader
    from posinterp.model.rope import RopeSpec
    from posinterp.run.estimate import LOAD_S, estimate, train_seconds
    from posinterp.speed import cached_speed

    prep = loader.prepare(recipe.model, RopeSpec(recipe.extend.method, sc.factor), sc.original_length)
    ref, config, info = prep.ref, prep.config, prep.rope_info
    tr, dist = recipe.train, recipe.launch
    seq_len = int(tr.seq_len or info["target_length"])
    gpus = int(dist.get("gpus", 1))
    kw = dict(micro_batch=tr.batch_size, grad_accum=tr.grad_accum, steps=tr.steps, gpus=gpus,
              sharded=bool(dist.get("sharded", gpus > 1)), checkpointing=tr.checkpointing != "off", lora=tr.lora,
              loss_chunk=tr.loss_chunk, peak_tflops=float(dist.get("peak_tflops", 989.0)), mfu=float(dist.get("mfu", 0.4)))
    est = estimate(config, seq_len=seq_len, **kw)  # memory at the longest sequence
    means: dict[int, float] = {}
    if tr.task == "summarize":  # one unpadded example per sequence: time and tokens at the data's own lengths
        data_line, means = summarize_stage.train_data_line(recipe, stages)
    else:
        try:
            docs = corpus.load_documents(str(tr.data), split=tr.split, limit=None)
            data_line = f"{corpus.describe(str(tr.data), tr.split)}: {len(docs)} documents, " \
                        f"{sum(len(d.text) for d in docs) / 1e6:.1f} M characters"
        except PosinterpError as err:
            data_line = f"{tr.data}: not available here ({err})"
    tokens = means.get(seq_len, seq_len)
    assumed_s = estimate(config, seq_len=round(tokens), **kw).seconds_per_step if tokens != seq_len else est.seconds_per_step
    others = sorted({int(s.config.seq_len or s.window) for s in stages if s.name.startswith("train (")} - {seq_len})
    fine_tunes = sum(1 for s in stages if s.name.startswith("train ("))
    status = status if status is not None else statuses(stages)
    plan_ = {
        "recipe": recipe.name, "model": str(ref.folder / (ref.gguf_file or "")), "architecture": config.model_type,
        "original_length": sc.original_length, "target_length": info["target_length"],
        "rope_parameters": info["rope_parameters"],
        "train": {"steps": tr.steps, "seq_len": seq_len, "micro_batch": tr.batch_size, "grad_accum": tr.grad_accum,
                  "gpus": gpus, "tokens_total": round(tokens * tr.batch_size * tr.grad_accum * gpus * tr.steps),
                  "fine_tunes": fine_tunes},
        "data": data_line, "estimate": est.as_dict(),
        "stages": [{"stage": s.name, "output": str(s.output), "what": s.describe, "status": status[s.name].kind,
                    "why": status[s.name].line() if status[s.name].why else ""} for s in stages],
    }
    print(f"recipe {recipe.name}: {plan_['model']} ({config.model_type}), window {sc.original_length} → "
          f"{info['target_length']}, rope {info['rope_parameters']}")
    print(f"data: {data_line}")
    nopi = "".join(f"; nopi_ft: ≤ {n}, mean {means[n]:,.0f}" if n in means else f" (nopi_ft: {n})" for n in others)
    length = f"one example of ≤ {seq_len} tokens (mean {tokens:,.0f}{nopi})" if means else f"{seq_len} tokens{nopi}"
    print(f"train: {tr.steps} steps × {length} × micro-batch {tr.batch_size} × accumulation "
          f"{tr.grad_accum} × {gpus} device(s) = {plan_['train']['tokens_total'] / 1e6:.1f} M tokens per fine-tune, "
          f"{fine_tunes} fine-tune(s)")
    print(f"memory per device ≈ {est.total_gib:.1f} GiB (weights {est.weights_gib:.1f}, grads {est.grads_gib:.1f}, "
          f"Adam {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f}, logits {est.logits_gib:.1f}; "
          f"{est.params / 1e9:.2f} B params{', sharded over ' + str(gpus) if est.sharded else ''})")
    measured, when = (speed, "measured now") if speed is not None else (None, None)
    if measured is None and (hit := cached_speed(config, tr.precision)) is not None:  # `run` pinned auto
        measured, when = hit[0], f"the probe cached here on {hit[1]}"
    if measured is not None and gpus == 1:
        step_s = tr.batch_size * measured.train_step_s(seq_len, tr.grad_accum) if not means else train_seconds(
            measured, steps=1, seq_len=seq_len, batch_size=tr.batch_size, grad_accum=tr.grad_accum,
            example_tokens=summarize_stage.example_tokens(tr, seq_len, recipe.model)) - LOAD_S
        plan_["time"] = {"seconds_per_step": step_s, "source": f"this machine ({measured.precision}, {when})"}
        print(f"time ≈ {step_s:.3g} s/step, {step_s * tr.steps / 3600:.1f} h for {tr.steps} steps, from this machine's "
              f"measured speed ({measured.precision}; {when})" + (f" (× {fine_tunes} fine-tunes)" if fine_tunes > 1 else ""))
    else:
        plan_["time"] = {"seconds_per_step": assumed_s, "source": "assumed: the recipe's launch.peak_tflops × launch.mfu"}
        print(f"time ≈ {assumed_s:.3g} s/step, {assumed_s * tr.steps / 3600:.1f} h for {tr.steps} steps, ASSUMED (not measured "
              f"here): {est.assumptions['mfu']:.0%} MFU of {est.assumptions['peak_tflops_per_device']:g} TFLOP/s per device, "
              f"the recipe's launch.mfu × launch.peak_tflops; --estimate measures this machine"
              + (f" (× {fine_tunes} fine-tunes)" if fine_tunes > 1 else ""))
    if recipe.eval.ruler is not None:
        from posinterp.run.ruler_stage import work_line

        plan_["ruler"] = work_line(stages)
        print(f"ruler: {plan_['ruler']}")
    if recipe.eval.summarize is not None:
        plan_["summarize"] = summarize_stage.work_line(stages, recipe.model)
        print(f"summarize: {plan_['summarize']}")
    for s in plan_["stages"]:
        print(f"  [{s['status']}] {s['stage']:<18} → {s['output']}  ({s['why'] or s['what']})")
    return plan_
