"""A recipe's RULER stages before they run: the work they hold (for `--dry-run`) and their prompts checked.

With an `eval.ruler` section each row gets a stage `ruler <row>` (`run/stages.py`), priced by
`estimate.ruler_seconds` and trimmed first by a `--budget` (samples → 1). Its prompts are assembled from the
model's own tokens, so whether a length leaves room for a task's template is known only with the tokenizer:
`check_prompts` builds them at the plan's shortest length before any stage runs (no model is loaded, nothing
is written), and a length too short for a task is refused in one line naming the recipe key.
"""

from __future__ import annotations

from typing import Any

from posinterp.errors import PosinterpError
from posinterp.evals.common import parse_lengths
from posinterp.evals.ruler import RulerConfig, build_samples, new_tokens_of, parse_tasks, samples_at
from posinterp.run.recipe import Recipe, _recipe_flags


def ruler_stages(stages: list) -> list:
    return [s for s in stages if s.name.startswith("ruler ")]


def work(cfg: RulerConfig) -> dict[str, int]:
    """One RULER stage's prompts, the tokens they prefill and the most tokens their answers decode."""
    tasks = parse_tasks(cfg.tasks)
    lengths = parse_lengths(cfg.lengths)
    decode = sum(new_tokens_of(t, cfg.max_new_tokens) for t in tasks)
    return {"prompts": sum(samples_at(n, cfg.samples) for n in lengths) * len(tasks),
            "prompt_tokens": sum(samples_at(n, cfg.samples) * n for n in lengths) * len(tasks),
            "new_tokens": sum(samples_at(n, cfg.samples) for n in lengths) * decode}


def work_line(stages: list) -> str:
    """`--dry-run`'s line: tasks, samples and, over the RULER stages, prompts and tokens."""
    found = ruler_stages(stages)
    if not found:
        return "no row has a RULER length (the original row keeps those up to L)"
    cfg = found[0].config
    tasks = parse_tasks(cfg.tasks)
    total = {k: sum(work(s.config)[k] for s in found) for k in ("prompts", "prompt_tokens", "new_tokens")}
    samples = f"{cfg.samples}" if cfg.samples else "10 up to 4096 tokens, 5 above,"
    rows = "; ".join(f"{s.name.removeprefix('ruler ')} at {s.config.lengths}" for s in found)
    return (f"{len(tasks)} task{'s' * (len(tasks) != 1)} ({', '.join(tasks)}), {samples} sample(s) per task and "
            f"length: {total['prompts']} prompts, {total['prompt_tokens']:,} prompt tokens to prefill and at most "
            f"{total['new_tokens']:,} to decode, over {len(found)} row{'s' * (len(found) != 1)} ({rows})")


def check_prompts(recipe: Recipe, stages: list) -> None:
    """Build every task's prompts at the plan's shortest RULER length with the recipe model's tokenizer; a
    length too short for a task (or a chat format without a template) is refused naming the recipe key."""
    from posinterp.evals.ruler_prompts import Builder
    from posinterp.model import refs

    found = ruler_stages(stages)
    if not found:
        return
    cfg: Any = found[0].config
    shortest = min(min(parse_lengths(s.config.lengths)) for s in found)
    try:
        builder = Builder(refs.load_tokenizer(refs.resolve(recipe.model)), cfg.prompt_format)
        build_samples(builder, parse_tasks(cfg.tasks), [shortest], cfg.samples, int(cfg.seed))
    except PosinterpError as err:
        given = recipe.eval.ruler is not None and recipe.eval.ruler.lengths
        unset = "" if given else " (eval.ruler.lengths is not set: the passkey lengths are used)"
        raise PosinterpError(_recipe_flags(str(err), RulerConfig, "eval.ruler.") + unset) from None
