"""A recipe file: model, method and factor, data, training settings and evaluation protocols.

Sections map onto the verbs' own config dataclasses (`extend` → ExtendConfig, `train` →
TrainConfig, `eval.ppl` → PerplexityConfig, `eval.passkey` → PasskeyConfig), so a recipe has the
same keys and defaults as the CLI flags; unknown keys are refused with the nearest valid name.
Dotted overrides (`--train.steps 50`) edit the loaded mapping before it is checked.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posinterp.errors import PosinterpError

ROWS = ("original", "extrapolation", "pi", "pi_ft", "nopi_ft", "yarn")
"""Rows of the before/after table, in report order."""
ROW_TITLES = {
    "original": "original model (window L)",
    "extrapolation": "plain extrapolation (no scaling)",
    "pi": "PI, 0 fine-tune steps",
    "pi_ft": "PI, fine-tuned",
    "nopi_ft": "fine-tuned without PI (same steps, same data)",
    "yarn": "YaRN, no fine-tuning",
}


@dataclass
class EvalSection:
    """Evaluation protocols shared by every row of the table."""

    windows: list = field(default_factory=lambda: [2048, 8192, 16384])
    ppl: dict = field(default_factory=dict)
    passkey: dict = field(default_factory=dict)
    passkey_lengths: list | None = None
    rows: list = field(default_factory=lambda: list(ROWS))


@dataclass
class Recipe:
    """The whole pipeline; `extend`/`train` hold the verbs' own fields (model and out are set by run)."""

    name: str
    model: str
    out: str
    extend: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)
    launch: dict = field(default_factory=dict)
    """Where it runs, for the dry-run estimate and the launch line: gpus, sharded, peak_tflops, mfu,
    accelerate_config."""
    notes: str = ""


TOP_KEYS = [f.name for f in dataclasses.fields(Recipe)]
EVAL_KEYS = [f.name for f in dataclasses.fields(EvalSection)]


def _nearest(key: str, valid: list[str], where: str) -> PosinterpError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return PosinterpError(f"unknown key '{where}{key}'{hint}")


def parse_value(text: str) -> Any:
    """A command-line override value, read as YAML (numbers, booleans, lists)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`--train.steps 50 --eval.windows [2048,4096]` → edits of the mapping."""
    data = copy.deepcopy(data)
    i = 0
    while i < len(overrides):
        token = overrides[i]
        if not token.startswith("--") or len(token) < 3:
            raise PosinterpError(f"override {token!r}: write it as --section.key VALUE, e.g. --train.steps 50")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(overrides):
                raise PosinterpError(f"override --{key} has no value; e.g. --{key} 50")
            value = overrides[i + 1]
            i += 1
        i += 1
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part.replace("-", "_"), {})
            if not isinstance(node, dict):
                raise PosinterpError(f"override --{key}: '{part}' is not a section")
        node[parts[-1].replace("-", "_")] = parse_value(value)
    return data


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> tuple[Recipe, dict]:
    """Read, override and check a recipe; returns (Recipe, the resolved mapping to save)."""
    path = Path(path)
    if not path.is_file():
        raise PosinterpError(f"recipe {path} does not exist; see recipes/*.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PosinterpError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PosinterpError(f"recipe {path} must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    for key in data:
        if key not in TOP_KEYS:
            raise _nearest(key, TOP_KEYS, "")
    for key in ("name", "model", "out"):
        if not data.get(key):
            raise PosinterpError(f"recipe {path} needs '{key}'")
    ev = dict(data.get("eval") or {})
    for key in ev:
        if key not in EVAL_KEYS:
            raise _nearest(key, EVAL_KEYS, "eval.")
    for row in ev.get("rows", []):
        if row not in ROWS:
            raise _nearest(row, list(ROWS), "eval.rows: ")
    recipe = Recipe(**{**data, "eval": EvalSection(**ev)})
    # check every section against its verb's config dataclass now, before any work
    from posinterp import extend as extend_mod
    from posinterp.cli import check_keys

    check_keys(extend_mod.ExtendConfig, recipe.extend, "extend.", skip=("model", "out"))
    from posinterp import train as train_mod

    check_keys(train_mod.TrainConfig, recipe.train, "train.", skip=("model", "out"))
    from posinterp.evals import passkey as pk_mod
    from posinterp.evals import perplexity as ppl_mod

    check_keys(ppl_mod.PerplexityConfig, recipe.eval.ppl, "eval.ppl.", skip=("model", "out"))
    check_keys(pk_mod.PasskeyConfig, recipe.eval.passkey, "eval.passkey.", skip=("model", "out"))
    return recipe, data
