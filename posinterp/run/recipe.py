"""A recipe file: model, method and factor, data, training settings and evaluation protocols.

Sections are the verbs' own config dataclasses (`extend` → ExtendConfig, `train` → TrainConfig, `eval.ppl` →
PerplexityConfig, `eval.passkey` → PasskeyConfig, `eval.ruler` → RulerConfig, `eval.summarize` → SummarizeConfig), built when loaded,
so a recipe has the same keys and defaults as the CLI flags and every bad value (an unknown key,
`extend.factor: -1`, `train.lr: -1`, a stride too large for a window) is refused in one line before
any stage runs. Dotted overrides (`--train.steps 50`) edit the loaded mapping before it is built.
The fields the pipeline sets per stage (model, out, rope, windows, ...) hold placeholders here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posinterp.atomic import check_kind
from posinterp.cli import arg, from_mapping
from posinterp.errors import PosinterpError
from posinterp.evals.passkey import PasskeyConfig
from posinterp.evals.perplexity import PerplexityConfig
from posinterp.evals.ruler import RulerConfig
from posinterp.evals.summarize import SummarizeConfig
from posinterp.model.extend import ExtendConfig
from posinterp.train.config import TrainConfig

METHOD_TITLES = {"pi": "PI", "yarn": "YaRN", "ntk": "NTK-aware", "dynamic": "dynamic NTK", "llama3": "Llama 3 scaling",
                 "none": "no PI"}
"""Rope methods a row can use, as the report names them (`none`: RoPE unchanged)."""

FINE_TUNED = {"pi_ft": "pi", "yarn_ft": "yarn", "ntk_ft": "ntk", "dynamic_ft": "dynamic", "llama3_ft": "llama3",
              "nopi_ft": "none"}
"""Equal-budget rows: `<method>_ft` → the rope method fine-tuned with the recipe's `train` settings."""

ROWS = ("original", "extrapolation", "pi", "pi_ft", "yarn", "yarn_ft", "ntk", "ntk_ft", "dynamic", "dynamic_ft",
        "llama3", "llama3_ft", "nopi_ft")
"""Rows of the before/after table; a recipe's `eval.rows` picks some, in its own order."""

DEFAULT_ROWS = ("original", "extrapolation", "pi", "pi_ft", "nopi_ft", "yarn")
"""Rows of a recipe that gives no `eval.rows`."""

DEFAULT_WINDOWS = (2048, 8192, 16384)
"""Perplexity windows (and passkey lengths) of a recipe that gives no `eval.windows`."""

ROW_TITLES = {
    "original": "original model (window L)",
    "extrapolation": "plain extrapolation (no scaling)",
    "pi": "PI, 0 fine-tune steps",
    "pi_ft": "PI, fine-tuned",
    "yarn": "YaRN, no fine-tuning",
    "yarn_ft": "YaRN, fine-tuned",
    "ntk": "NTK-aware, no fine-tuning",
    "ntk_ft": "NTK-aware, fine-tuned",
    "dynamic": "dynamic NTK, no fine-tuning",
    "dynamic_ft": "dynamic NTK, fine-tuned",
    "llama3": "Llama 3 scaling, no fine-tuning",
    "llama3_ft": "Llama 3 scaling, fine-tuned",
    "nopi_ft": "fine-tuned without PI (same steps, same data)",
}


def fine_tune_dir(row: str) -> str:
    """The run folder's subfolder a fine-tuned row writes (`pi_ft` → `pi-ft`, `nopi_ft` → `nopi-ft`);
    its checkpoints and metrics.jsonl go beside it, in `<folder>-checkpoints` (TrainConfig's default)."""
    return row.removesuffix("_ft") + "-ft"


def zero_shot_row(row: str) -> str | None:
    """The 0-step row of a fine-tuned row (`yarn_ft` → `yarn`); None for `nopi_ft` and 0-shot rows."""
    method = FINE_TUNED.get(row)
    return method if method in ROWS else None


PIPELINE_SET = {
    "extend": {"model": "the recipe's model", "out": "<out>/extended", "force": "run --force"},
    "train": {"model": "each fine-tuned row's start", "out": "<out>/<method>-ft", "rope": "the eval.rows chosen",
              "original_length": "extend.original_length", "checkpoint_dir": "<out>/<method>-ft-checkpoints",
              "allow_beyond_window": "row nopi_ft when train.seq_len exceeds the window",
              "resume": "run resumes always", "force": "run --force"},
    "eval": {"model": "each row", "out": "<out>/eval/<row>", "rope": "the eval.rows chosen",
             "original_length": "extend.original_length", "allow_beyond_window": "each row",
             "windows": "eval.windows", "lengths": "eval.passkey_lengths", "force": "run --force"},
}
"""Fields of the sections' dataclasses that the pipeline sets per stage → where they come from."""
PIPELINE_SET["ruler"] = {**{k: v for k, v in PIPELINE_SET["eval"].items() if k not in ("windows", "lengths")},
                         "reference": "the report: the original row's RULER results"}
PIPELINE_SET["summarize"] = {**{k: v for k, v in PIPELINE_SET["ruler"].items() if k in ("model", "out", "rope", "force",
                             "original_length")}, "max_input_tokens": "each row's window (what fits beside the prompt)"}


@dataclass
class EvalSection:
    """Evaluation protocols shared by every row of the table (the recipe's `eval` keys)."""

    ppl: PerplexityConfig | None
    """None (`ppl: null`): no perplexity stages."""
    passkey: PasskeyConfig | None
    """None (`passkey: null`): no passkey stages."""
    windows: list[int] = arg(list(DEFAULT_WINDOWS), help="perplexity windows in tokens; the original row keeps "
                                                         "those up to L")
    passkey_lengths: list[int] | None = arg(None, help="passkey prompt lengths in tokens (default: eval.windows)")
    rows: list[str] = arg(list(DEFAULT_ROWS), help="rows of the table, in report order, of: " + ", ".join(ROWS))
    ruler: RulerConfig | None = arg(None, help="RULER on every row, at the passkey lengths unless it gives "
                                               "lengths: eval ruler's flags as keys, e.g. {tasks: [fwe], samples: 1}")
    summarize: SummarizeConfig | None = arg(None, help="eval summarize on every row but extrapolation, each document "
                                                       "cut to the row's window: its flags as keys, e.g. {data: aclsum}")
    nopi_ft_seq_len: int | None = arg(None, help="nopi_ft's training length, e.g. L to train within the window (null: "
                                                 "train.seq_len, past it with RoPE unchanged: direct fine-tuning)")


@dataclass
class Recipe:
    """The whole pipeline, its sections typed; model/out of each section are placeholders run replaces."""

    name: str
    model: str
    out: str
    extend: ExtendConfig
    train: TrainConfig
    eval: EvalSection
    launch: dict = field(default_factory=dict)
    """Where it runs, for the dry-run estimate and the launch line: gpus, sharded, peak_tflops, mfu,
    accelerate_config."""
    notes: str = ""
    given: dict = field(default_factory=dict)
    """The resolved mapping as written (overrides applied): what the recipe set explicitly."""


TOP_KEYS = [f.name for f in dataclasses.fields(Recipe) if f.name != "given"]
EVAL_KEYS = [f.name for f in dataclasses.fields(EvalSection)]


def _nearest(key: str, valid: list[str], where: str) -> PosinterpError:
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return PosinterpError(f"unknown key '{where}{key}'{hint}")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """A command-line override value, read as YAML (numbers, booleans, lists); `2e-4` is a number too
    (YAML 1.1 reads an exponent without a dot as text)."""
    if text == "":
        return ""
    value = yaml.safe_load(text)
    return float(value) if isinstance(value, str) and _NUMBER.fullmatch(value) else value


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


def _recipe_flags(message: str, cls: type, where: str) -> str:
    """Name a dataclass's flags as recipe keys: `--seq-len` → `train.seq_len` (other text unchanged)."""
    names = {f.name for f in dataclasses.fields(cls)}

    def key(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return f"{where}{name}" if name in names else m.group(0)

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", key, message)


_KINDS = {int: (int,), float: (int, float), bool: (bool,)}
_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _check_kind(hints: dict, key: str, value: Any, where: str) -> None:
    """Refuse a list for a count, a word for a rate, 2.5 for a step count: in one line, naming the key."""
    tp, optional = hints.get(key), False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp, optional = (args[0] if len(args) == 1 else None), True
    if value is None:
        if not optional:
            raise PosinterpError(f"{where}{key} is empty; give a value or remove the key for its default")
        return
    if tp not in _KINDS:
        return
    if isinstance(value, str) and tp is bool:  # quoted in the YAML: read as the CLI reads it
        ok = value.lower() in _BOOL_WORDS
    elif isinstance(value, str):
        ok = _NUMBER.fullmatch(value) is not None and (tp is float or value.lstrip("+-").isdigit())
    else:
        ok = isinstance(value, _KINDS[tp]) and (tp is bool or not isinstance(value, bool))
    if not ok:
        kind = {int: "a whole number", float: "a number", bool: "true or false"}[tp]
        raise PosinterpError(f"{where}{key} {value!r} must be {kind}")


def section(cls: type, data: Any, where: str, pipeline: dict[str, str], placeholders: dict[str, Any]) -> Any:
    """Build a recipe section as its verb's config dataclass, validated now; errors name the recipe key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PosinterpError(f"'{where.rstrip('.')}' must be a mapping of keys, got {data!r}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key in pipeline:
            raise PosinterpError(f"'{where}{key}' is set by the pipeline (from {pipeline[key]}); remove it from the "
                                 "recipe")
        if key in hints:
            _check_kind(hints, key, value, where)
    try:
        return from_mapping(cls, {**data, **placeholders}, where)
    except PosinterpError as err:
        raise PosinterpError(_recipe_flags(str(err), cls, where)) from None
    except (TypeError, ValueError) as err:
        raise PosinterpError(f"'{where.rstrip('.')}': a value is of the wrong kind ({err})") from None


def _token_counts(value: Any, key: str, minimum: int) -> list[int]:
    items = value if isinstance(value, list | tuple) else str(value).replace(" ", "").split(",")
    try:
        if any(isinstance(v, bool | float) for v in items):
            raise ValueError
        counts = [int(v) for v in items if v != ""]
    except (TypeError, ValueError):
        raise PosinterpError(f"{key} {value!r} is not a list of token counts; e.g. {key}: [2048, 8192]") from None
    if not counts or min(counts) < minimum:
        raise PosinterpError(f"{key} {value!r}: give token counts of at least {minimum}, e.g. {key}: [2048, 8192]")
    return counts


def _eval_section(ev: Any, model: str) -> EvalSection:
    if not isinstance(ev, dict):
        raise PosinterpError(f"'eval' must be a mapping of keys, got {ev!r}")
    for key in ev:
        if key not in EVAL_KEYS:
            raise _nearest(key, EVAL_KEYS, "eval.")
    rows = ev.get("rows", list(DEFAULT_ROWS))
    if not isinstance(rows, list) or not rows:
        raise PosinterpError(f"eval.rows {rows!r} must be a non-empty list of rows: {', '.join(ROWS)}")
    for row in rows:
        if row not in ROWS:
            raise _nearest(str(row), list(ROWS), "eval.rows: ")
    if len(set(rows)) != len(rows):
        raise PosinterpError(f"eval.rows {rows}: a row is listed twice")
    windows = _token_counts(ev.get("windows", list(DEFAULT_WINDOWS)), "eval.windows", 2)
    lengths = ev.get("passkey_lengths")
    lengths = None if lengths is None else _token_counts(lengths, "eval.passkey_lengths", 1)
    every = ",".join(map(str, sorted(set(windows))))
    ppl = None if "ppl" in ev and ev["ppl"] is None else section(
        PerplexityConfig, ev.get("ppl"), "eval.ppl.", PIPELINE_SET["eval"], {"model": model, "windows": every})
    passkey = None
    if ev.get("passkey", {}) is not None:
        passkey = section(PasskeyConfig, ev.get("passkey"), "eval.passkey.", PIPELINE_SET["eval"],
                          {"model": model, "lengths": ",".join(map(str, lengths or windows))})
    ruler, summ, nopi = ev.get("ruler"), ev.get("summarize"), ev.get("nopi_ft_seq_len")
    if ruler is not None:
        ruler = section(RulerConfig, ruler, "eval.ruler.", PIPELINE_SET["ruler"], {"model": model})
    if summ is not None:
        summ = section(SummarizeConfig, summ, "eval.summarize.", PIPELINE_SET["summarize"], {"model": model})
    if nopi is not None and (isinstance(nopi, bool) or not isinstance(nopi, int) or nopi < 2):
        raise PosinterpError(f"eval.nopi_ft_seq_len {nopi!r} must be a token count of at least 2, e.g. 8192")
    return EvalSection(windows=windows, ppl=ppl, passkey=passkey, passkey_lengths=lengths, rows=list(rows), ruler=ruler,
                       summarize=summ, nopi_ft_seq_len=nopi)


def build(data: dict, where: str = "recipe") -> Recipe:
    """A Recipe from a resolved mapping: every section typed and validated, nothing computed or written."""
    for key in data:
        if key not in TOP_KEYS:
            raise _nearest(key, TOP_KEYS, "")
    for key in ("name", "model", "out"):
        if not data.get(key):
            raise PosinterpError(f"{where} needs '{key}'")
    model, out = str(data["model"]), check_kind(str(data["out"]), f"{where}: out", "folder")
    launch = data.get("launch") or {}
    if not isinstance(launch, dict):
        raise PosinterpError(f"'launch' must be a mapping of keys, got {launch!r}")
    extend = section(ExtendConfig, data.get("extend"), "extend.", PIPELINE_SET["extend"],
                     {"model": model, "out": out / "extended"})
    train = section(TrainConfig, data.get("train"), "train.", PIPELINE_SET["train"],
                    {"model": model, "out": out / "pi-ft"})
    ev = _eval_section(data.get("eval") or {}, model)
    return Recipe(name=str(data["name"]), model=model, out=str(out), extend=extend, train=train, eval=ev,
                  launch=dict(launch), notes=str(data.get("notes") or ""), given=copy.deepcopy(data))


SECTIONS: tuple[tuple[str, type, str], ...] = (
    ("extend", ExtendConfig, "extend"), ("train", TrainConfig, "train"), ("eval", EvalSection, ""),
    ("eval.ppl", PerplexityConfig, "eval"), ("eval.passkey", PasskeyConfig, "eval"), ("eval.ruler", RulerConfig, "ruler"),
    ("eval.summarize", SummarizeConfig, "summarize"))
"""Recipe section → its dataclass and its PIPELINE_SET entry (the fields no recipe sets; eval's own
keys are all the recipe's)."""


def _show(value: Any) -> str:
    """A default as an override would write it (YAML): null, true, [2048,8192], ''."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value) if str(value) != "" else "''"


def override_keys() -> list[tuple[str, str, str]]:
    """(section, dotted key, default) of every key a recipe (and so an override) may set, in section order."""
    out = []
    for where, cls, pipeline in SECTIONS:
        for f in dataclasses.fields(cls):
            if f.name in PIPELINE_SET.get(pipeline, {}):
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:  # eval.ppl and eval.passkey: sections, listed on their own
                continue
            out.append((where, f"{where}.{f.name}", _show(default)))
    return out


def _clip(text: str, room: int) -> str:
    """`text` cut at a word to fit `room` characters, with "…" (and ")" when cut inside parentheses)."""
    if len(text) <= room:
        return text
    cut = text[:room - 2].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + ("…)" if cut.count("(") > cut.count(")") else "…")


def override_help(width: int = 104) -> str:
    """The recipe keys as `--section.key DEFAULT  help`, one line each, grouped by section: `run --help`'s
    epilog. Generated from the sections' dataclasses, so it lists exactly what a recipe may set."""
    helps = {}
    for where, cls, _ in SECTIONS:
        for f in dataclasses.fields(cls):
            text = _recipe_flags(str(f.metadata.get("help", "")).replace("%%", "%"), cls, f"{where}.")
            if f.metadata.get("choices"):
                text += f" ({'|'.join(map(str, f.metadata['choices']))})"
            helps[f"{where}.{f.name}"] = text
    keys = override_keys()
    column = min(40, max(len(f"    --{k} {d}") for _, k, d in keys) + 2)  # longer ones push their help right
    lines = ["recipe keys: any of them overrides the recipe as --SECTION.KEY VALUE (VALUE read as YAML:",
             "50, 2e-4, [2048,8192], true, null); shown with the dataclass default a recipe's own value replaces.",
             "",
             "  top level: --name, --model, --out (the run folder), --notes; --launch.gpus, --launch.sharded,",
             "  --launch.peak_tflops, --launch.mfu, --launch.accelerate_config (for the estimate and launch line)"]
    section_now = None
    for where, key, default in keys:
        if where != section_now:
            lines += ["", f"  {where}:"]
            section_now = where
        left = f"    --{key} {default}"
        left = left.ljust(column) if len(left) < column else left + "  "
        lines.append(left + _clip(helps[key], max(24, width - len(left))))
    lines += ["", "Keys the pipeline sets per stage (model, out, rope, windows, ...) are not recipe keys. Full help",
              "of each: posinterp extend --help, posinterp train --help, posinterp eval ppl|passkey|ruler|summarize --help."]
    return "\n".join(lines)


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> tuple[Recipe, dict]:
    """Read, override and check a recipe; returns (Recipe, the resolved mapping to save)."""
    path = check_kind(path, "recipe", "file")
    if not path.is_file():
        raise PosinterpError(f"recipe {path} does not exist; see recipes/*.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise PosinterpError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PosinterpError(f"recipe {path} must be a mapping of sections")
    data = apply_overrides(data, overrides or [])
    return build(data, f"recipe {path}"), data
