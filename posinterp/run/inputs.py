"""The recipe's corpora checked before the run folder is written: `train.data` of a next-token fine-tune and
`eval.ppl.data` must be readable, or the run is refused in one line naming the recipe key. (Summarization pairs
and their token budgets are checked by `run/summarize_stage.check`, RULER's prompts by `run/ruler_stage`.)
"""

from __future__ import annotations

from posinterp.errors import PosinterpError
from posinterp.run.recipe import Recipe, _recipe_flags


def check_data(recipe: Recipe, trains: bool) -> None:
    """The recipe's data (train.data when a row trains on next-token loss, eval.ppl.data unless `ppl: null`) is
    readable: refused naming the key, before the run folder is written."""
    from posinterp.data import corpus

    parts = [(recipe.eval.ppl, "eval.ppl.")] if recipe.eval.ppl is not None else []
    parts += [(recipe.train, "train.")] if trains and recipe.train.task == "lm" else []
    for cfg, where in parts:
        try:
            corpus.check(cfg.data, split=cfg.split, text_field=cfg.text_field)
        except PosinterpError as err:
            raise PosinterpError(_recipe_flags(str(err), type(cfg), where)) from None
