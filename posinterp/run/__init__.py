"""The main job: a recipe drives extend → train → evaluate → report, priced and fitted to a budget.

Owns: `recipe` (the YAML, its keys and overrides), `stages` (the rows and their stages), `stamps` (what made each
stage's output: a stage is done only when its stamp matches the plan), `inputs` (the corpora checked before any
stage), `budget` (estimates, trims, `--dry-run`), `estimate` (the stage probe and memory estimate), `ruler_stage`
and `summarize_stage` (those evaluations' stages: work, price, trim, checks), `pipeline` (the `run` verb) and
`report` (with `ruler_report`, `summarize_report` and `timings_report`).

May import: everything else in posinterp; nothing imports it.

`from posinterp.run import run, RunConfig` stays the library's entry point.
"""

from __future__ import annotations

from posinterp import lazy

__getattr__ = lazy.exports(__name__, {"run": "posinterp.run.pipeline", "RunConfig": "posinterp.run.pipeline"})
