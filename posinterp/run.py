"""`posinterp run RECIPE`: extend → fine-tune → evaluate → report, skipping finished stages.

    posinterp run recipes/smollm2-16k-cpu.yaml
    posinterp run recipes/smollm2-16k-cpu.yaml --train.steps 20 --dry-run

Every stage writes its output atomically into the run folder, so a stage whose output exists is
complete and is skipped on a re-run; a crash or Ctrl-C loses at most the stage in progress (and
training resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from posinterp.atomic import write_json, write_text
from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError
from posinterp.recipe import ROW_TITLES, Recipe, load_recipe

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    recipe: Path = arg(help="recipe YAML (see recipes/)", positional=True)
    dry_run: bool = arg(False, help="resolve model, data, memory estimate, steps and paths; compute nothing")
    force: bool = arg(False, help="recompute every stage, even finished ones")
    overrides: list = arg([], help="dotted overrides such as --train.steps 50", cli=False)


@dataclass
class Stage:
    name: str
    output: Path
    action: Callable[[], object]
    describe: str


def _row_model(recipe: Recipe, row: str, run_dir: Path) -> tuple[str, str | None, bool]:
    """(model reference, --rope, allow beyond window) for a row of the table."""
    factor = float(recipe.extend.get("factor", 2.0))
    return {
        "original": (recipe.model, None, False),
        "extrapolation": (recipe.model, "none", True),
        "pi": (str(run_dir / "extended"), None, False),
        "pi_ft": (str(run_dir / "pi-ft"), None, False),
        "nopi_ft": (str(run_dir / "nopi-ft"), "none", True),
        "yarn": (recipe.model, f"yarn:{factor:g}", False),
    }[row]


def original_length(recipe: Recipe) -> int:
    from posinterp import models

    if recipe.extend.get("original_length"):
        return int(recipe.extend["original_length"])
    return models.original_window(models.load_config(models.resolve(recipe.model)))


def plan(recipe: Recipe, run_dir: Path) -> list[Stage]:
    """The stages, in order, with the callables that produce each output."""
    from posinterp.evals.passkey import PasskeyConfig, passkey
    from posinterp.evals.perplexity import PerplexityConfig, perplexity, strides_for
    from posinterp.extend import ExtendConfig, extend
    from posinterp.train import TrainConfig, train

    L = original_length(recipe)
    factor = float(recipe.extend.get("factor") or recipe.extend.get("target_length", 2 * L) / L)
    rows = list(recipe.eval.rows)
    stages = [Stage("extend", run_dir / "extended",
                    lambda: extend(ExtendConfig(model=recipe.model, out=run_dir / "extended", force=True,
                                                **recipe.extend)),
                    f"extend {recipe.model} ×{factor:g} ({recipe.extend.get('method', 'pi')})")]
    if "pi_ft" in rows:
        stages.append(Stage("train (PI)", run_dir / "pi-ft",
                            lambda: train(TrainConfig(model=str(run_dir / "extended"), out=run_dir / "pi-ft",
                                                      resume=True, **recipe.train)),
                            f"fine-tune the PI model: {_train_summary(recipe.train)}"))
    if "nopi_ft" in rows:
        stages.append(Stage("train (no PI)", run_dir / "nopi-ft",
                            lambda: train(TrainConfig(model=recipe.model, out=run_dir / "nopi-ft",
                                                      resume=True, **recipe.train)),
                            f"fine-tune without PI, same steps and data: {_train_summary(recipe.train)}"))
    windows = [int(w) for w in recipe.eval.windows]
    lengths = recipe.eval.passkey_lengths or windows
    ppl_settings = dict(recipe.eval.ppl)
    stride_of = strides_for(windows, ppl_settings.get("stride", PerplexityConfig.__dataclass_fields__["stride"].default))
    for row in rows:
        model, rope, beyond = _row_model(recipe, row, run_dir)
        row_windows = [w for w in windows if row != "original" or w <= L]
        row_lengths = [int(n) for n in lengths if row != "original" or int(n) <= L]
        common = {"rope": rope} if rope else {}
        if beyond:
            common["allow_beyond_window"] = True
        out = run_dir / "eval" / row
        if row_windows:
            stages.append(Stage(f"ppl {row}", out / "ppl", _bind(
                perplexity, PerplexityConfig, model=model, out=out / "ppl",
                windows=",".join(map(str, row_windows)), **common,
                **{**ppl_settings, "stride": ",".join(str(stride_of[w]) for w in sorted(row_windows))}),
                f"perplexity of {ROW_TITLES[row]} at {row_windows}"))
        if row_lengths and recipe.eval.passkey is not None:
            stages.append(Stage(f"passkey {row}", out / "passkey", _bind(
                passkey, PasskeyConfig, model=model, out=out / "passkey",
                lengths=",".join(map(str, row_lengths)), **common, **recipe.eval.passkey),
                f"passkey of {ROW_TITLES[row]} at {row_lengths}"))
    return stages


def _bind(fn, cls, **kwargs):
    return lambda: fn(cls(**kwargs))


def _train_summary(train: dict) -> str:
    keys = ("steps", "seq_len", "batch_size", "grad_accum", "lr", "data")
    return ", ".join(f"{k}={train[k]}" for k in keys if k in train) or "defaults"


def _done(stage: Stage) -> bool:
    out = stage.output
    return out.is_dir() and any(out.iterdir())


def dry_run(recipe: Recipe, data: dict, stages: list[Stage], run_dir: Path) -> dict:
    """Print the plan: model, data, memory estimate, steps and outputs; compute nothing."""
    from posinterp import corpus, models
    from posinterp.estimate import estimate
    from posinterp.rope import RopeSpec, configure

    ref = models.resolve(recipe.model)
    config = models.load_config(ref)
    models.check_rope(config)
    L = original_length(recipe)
    factor = float(recipe.extend.get("factor") or recipe.extend["target_length"] / L)
    info = configure(config, RopeSpec(recipe.extend.get("method", "pi"), factor), L)
    tr = recipe.train
    from posinterp.train import TrainConfig

    defaults = TrainConfig.__dataclass_fields__
    get = lambda k, d=None: tr.get(k, defaults[k].default if k in defaults else d)  # noqa: E731
    seq_len, steps = int(get("seq_len")), int(get("steps"))
    micro, accum = int(get("batch_size", 1)), int(get("grad_accum", 1))
    dist = recipe.launch
    gpus = int(dist.get("gpus", 1))
    est = estimate(config, seq_len=seq_len, micro_batch=micro, grad_accum=accum, steps=steps, gpus=gpus,
                   sharded=bool(dist.get("sharded", gpus > 1)),
                   checkpointing=str(get("checkpointing", "auto")) != "off", lora=bool(get("lora", False)),
                   loss_chunk=int(get("loss_chunk", 2048)),
                   peak_tflops=float(dist.get("peak_tflops", 989.0)), mfu=float(dist.get("mfu", 0.4)))
    spec = str(tr.get("data") or "gutenberg")
    try:
        docs = corpus.load_documents(spec, split=str(get("split", "train")), limit=None)
        data_line = f"{corpus.describe(spec, str(get('split', 'train')))}: {len(docs)} documents, " \
                    f"{sum(len(d.text) for d in docs) / 1e6:.1f} M characters"
    except PosinterpError as err:
        data_line = f"{spec}: not available here ({err})"
    plan_ = {
        "recipe": recipe.name, "model": str(ref.folder / (ref.gguf_file or "")), "architecture": config.model_type,
        "original_length": L, "target_length": info["target_length"], "rope_parameters": info["rope_parameters"],
        "train": {"steps": steps, "seq_len": seq_len, "micro_batch": micro, "grad_accum": accum, "gpus": gpus,
                  "tokens_total": seq_len * micro * accum * gpus * steps},
        "data": data_line, "estimate": est.as_dict(),
        "stages": [{"stage": s.name, "output": str(s.output), "what": s.describe,
                    "status": "done" if _done(s) else "to run"} for s in stages],
    }
    print(f"recipe {recipe.name}: {plan_['model']} ({config.model_type}), window {L} → {info['target_length']}, "
          f"rope {info['rope_parameters']}")
    print(f"data: {data_line}")
    print(f"train: {steps} steps × {seq_len} tokens × micro-batch {micro} × accumulation {accum} × {gpus} device(s)"
          f" = {plan_['train']['tokens_total'] / 1e6:.1f} M tokens")
    print(f"memory per device ≈ {est.total_gib:.1f} GiB (weights {est.weights_gib:.1f}, grads {est.grads_gib:.1f}, "
          f"Adam {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f}, logits {est.logits_gib:.1f}; "
          f"{est.params / 1e9:.2f} B params{', sharded over ' + str(gpus) if est.sharded else ''})")
    print(f"time ≈ {est.seconds_per_step:.3g} s/step, {est.hours_total:.1f} h for {steps} steps at "
          f"{est.assumptions['mfu']:.0%} MFU of {est.assumptions['peak_tflops_per_device']:g} TFLOP/s per device")
    for s in plan_["stages"]:
        print(f"  [{s['status']}] {s['stage']:<18} → {s['output']}  ({s['what']})")
    return plan_


def run(cfg: RunConfig | Path | str | None = None, **kwargs) -> dict:
    """Run (or, with dry_run, plan) a recipe; returns the plan or the report's summary."""
    cfg = as_config(RunConfig, cfg, kwargs)
    recipe, data = load_recipe(cfg.recipe, cfg.overrides)
    run_dir = Path(recipe.out)
    stages = plan(recipe, run_dir)
    if cfg.dry_run:
        return dry_run(recipe, data, stages, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "recipe.resolved.yaml",
               f"# posinterp run {cfg.recipe} {' '.join(cfg.overrides)}\n" + yaml.safe_dump(data, sort_keys=False))
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

    summary = write_report(recipe, run_dir, timings)
    log.info("report: %s (stages run now: %.0f s; all stages: %.0f s)", run_dir / "report.md",
             time.time() - t_run, sum(timings.values()))
    return summary
