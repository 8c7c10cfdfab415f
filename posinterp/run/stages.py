"""A recipe as a list of stages: the rows (zero-shot and fine-tuned), their folders, and the scale of each stage.

Each row's evaluations: perplexity at `eval.windows` (none with `eval.ppl: null`), passkey at `eval.passkey_lengths`
and, with an `eval.ruler` section, RULER at `eval.ruler.lengths` (default: the passkey lengths, so both retrieval
measures share a length axis); the original row keeps the windows and lengths up to L. With an `eval.summarize`
section, every row but plain extrapolation summarizes its documents cut to its own window (`run/summarize_stage.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.run.recipe import FINE_TUNED, METHOD_TITLES, ROW_TITLES, Recipe, fine_tune_dir


@dataclass
class Stage:
    name: str
    output: Path
    verb: Callable[[Any], object]
    describe: str
    config: Any = None
    """The verb's config dataclass the stage runs with (its fields that change the result are its stamp's
    settings, `run/stamps.py`)."""
    window: int | None = None
    """Its row's window where the stage fills it: a summarize stage cuts each document to it, a fine-tune without
    seq_len trains at it."""

    def run(self) -> object:
        return self.verb(self.config)


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
    from posinterp.model import loader

    prep = loader.prepare(recipe.model, original_length=recipe.extend.original_length)
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
    window: int = 0
    """The window its evaluations load `model` with: L, s·L, or a no-PI fine-tune's raised one."""


def make_row(recipe: Recipe, name: str, run_dir: Path, sc: Scale, force: bool = False) -> Row:
    """Row `name`: the extend method's rows use the extended checkpoint, other methods are applied on
    the fly at the same factor, and every `<method>_ft` row fine-tunes with the same recipe.train."""
    extended, given_L = str(run_dir / "extended"), recipe.extend.original_length
    if name == "original":
        return Row(name, recipe.model, window=sc.model_window)
    if name == "extrapolation":
        return Row(name, recipe.model, "none", beyond=True, window=sc.model_window)
    if name not in FINE_TUNED:  # a method with 0 fine-tune steps
        if name == recipe.extend.method:
            return Row(name, extended, window=sc.target_length)
        return Row(name, recipe.model, sc.rope(name), original_length=given_L, window=sc.target_length)
    method = FINE_TUNED[name]
    start, rope = recipe.model, "none"
    if method == recipe.extend.method:
        start = extended
    elif method != "none":
        rope = sc.rope(method)
    window = sc.model_window if method == "none" else sc.target_length
    own = {"seq_len": recipe.eval.nopi_ft_seq_len} if method == "none" and recipe.eval.nopi_ft_seq_len else {}
    seq_len = int(own.get("seq_len") or recipe.train.seq_len or window)
    if seq_len > window and method != "none":
        raise PosinterpError(f"train.seq_len {seq_len} exceeds the window {window} of row {name} (×{sc.factor:g} "
                             f"of {sc.original_length}); lower train.seq_len or raise extend.factor")
    # no PI past the window is the paper's direct fine-tuning: RoPE unchanged, the window raised to seq_len
    train = dataclasses.replace(recipe.train, model=start, out=run_dir / fine_tune_dir(name), rope=rope,
                                original_length=given_L if rope != "none" else None, checkpoint_dir=None,
                                allow_beyond_window=seq_len > window, resume=not force, force=force, **own)
    return Row(name, str(train.out), "none", beyond=method == "none", train=train, window=max(seq_len, window))


def plan(recipe: Recipe, run_dir: Path, force: bool = False, sc: Scale | None = None) -> list[Stage]:
    """The stages, in order, each with the config it runs (built and checked now) and its output."""
    from posinterp.evals.passkey import passkey
    from posinterp.evals.perplexity import perplexity, strides_for
    from posinterp.evals.ruler import ruler
    from posinterp.evals.summarize import summarize
    from posinterp.model.extend import extend
    from posinterp.train.loop import train

    sc = sc or scale(recipe)
    rows = [make_row(recipe, name, run_dir, sc, force) for name in recipe.eval.rows]
    ext = dataclasses.replace(recipe.extend, model=recipe.model, out=run_dir / "extended", force=True)
    stages = []
    if any(str(ext.out) in (row.model, getattr(row.train, "model", None)) for row in rows):
        stages.append(Stage("extend", ext.out, extend,
                            f"extend {recipe.model} ×{sc.factor:g} ({ext.method})", ext))
    for row in rows:
        if row.train is not None:
            method = FINE_TUNED[row.name]
            how = "without PI (RoPE unchanged)" if method == "none" else f"with {METHOD_TITLES[method]}"
            stages.append(Stage(f"train ({METHOD_TITLES[method]})", row.train.out, train,
                                f"fine-tune {how}, same steps and data: {_train_summary(recipe, row.train)}", row.train,
                                window=row.window))
    windows = sorted(recipe.eval.windows)
    lengths = sorted(recipe.eval.passkey_lengths or windows)
    ru, su, ppl = recipe.eval.ruler, recipe.eval.summarize, recipe.eval.ppl
    ruler_lengths = ruler_lengths_of(recipe)
    stride_of = strides_for(windows, ppl.stride) if ppl is not None else {}
    for row in rows:
        row_windows = [w for w in windows if row.name != "original" or w <= sc.original_length]
        row_lengths = [n for n in lengths if row.name != "original" or n <= sc.original_length]
        common = {"model": row.model, "rope": row.rope, "allow_beyond_window": row.beyond,
                  "original_length": row.original_length, "force": force}
        out = run_dir / "eval" / row.name
        if row_windows and ppl is not None:
            cfg = dataclasses.replace(ppl, out=out / "ppl", windows=",".join(map(str, row_windows)),
                                      stride=",".join(str(stride_of[w]) for w in row_windows), **common)
            stages.append(Stage(f"ppl {row.name}", cfg.out, perplexity,
                                f"perplexity of {ROW_TITLES[row.name]} at {row_windows}", cfg))
        if row_lengths and recipe.eval.passkey is not None:
            cfg = dataclasses.replace(recipe.eval.passkey, out=out / "passkey",
                                      lengths=",".join(map(str, row_lengths)), **common)
            stages.append(Stage(f"passkey {row.name}", cfg.out, passkey,
                                f"passkey of {ROW_TITLES[row.name]} at {row_lengths}", cfg))
        row_ruler = [n for n in ruler_lengths if row.name != "original" or n <= sc.original_length]
        if row_ruler and ru is not None:
            cfg = dataclasses.replace(ru, out=out / "ruler", lengths=",".join(map(str, row_ruler)), **common)
            stages.append(Stage(f"ruler {row.name}", cfg.out, ruler,
                                f"RULER ({_tasks(ru.tasks)}) of {ROW_TITLES[row.name]} at {row_ruler}", cfg))
        if su is not None and row.name != "extrapolation":  # eval summarize cuts at the window: the original row again
            cfg = dataclasses.replace(su, out=out / "summarize", max_input_tokens=None,
                                      **{k: v for k, v in common.items() if k != "allow_beyond_window"})
            stages.append(Stage(f"summarize {row.name}", cfg.out, summarize,
                                f"summaries by {ROW_TITLES[row.name]}, {su.limit or 'all'} documents of {su.data}:"
                                f"{su.split} cut to its window {row.window}", cfg, window=row.window))
    return stages


def ruler_lengths_of(recipe: Recipe) -> list[int]:
    """RULER's prompt lengths: `eval.ruler.lengths`, else the passkey lengths (`eval.passkey_lengths`, else
    `eval.windows`); none without an `eval.ruler` section."""
    from posinterp.evals.common import parse_lengths

    ru = recipe.eval.ruler
    if ru is None:
        return []
    if ru.lengths:
        return parse_lengths(ru.lengths, "eval.ruler.lengths")
    return sorted(recipe.eval.passkey_lengths or recipe.eval.windows)


def _tasks(text: str) -> str:
    from posinterp.evals.ruler import parse_tasks

    names = parse_tasks(text)
    return ", ".join(names) if len(names) <= 3 else f"{len(names)} tasks"


def _train_summary(recipe: Recipe, train: Any) -> str:
    """The recipe's train keys that the stage's `train` config holds (nopi_ft's own seq_len, eval.nopi_ft_seq_len)."""
    keys = ("steps", "seq_len", "batch_size", "grad_accum", "lr", "data")
    given = recipe.given.get("train") or {}
    own = {"seq_len"} if train.seq_len != recipe.train.seq_len else set()
    return ", ".join(f"{k}={getattr(train, k)}" for k in keys if k in given or k in own) or "defaults"
