"""Dataclass-driven arguments: one default in one place, read by the CLI and by recipe YAML.

Every verb takes a config dataclass whose fields carry their help text. `add_arguments` turns the
fields into argparse flags (`--seq-len` for `seq_len`), `from_namespace` builds the dataclass back,
and `from_mapping` does the same for a recipe section, refusing unknown keys with the nearest name.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from posinterp.errors import PosinterpError

T = TypeVar("T")


def arg(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
        choices: tuple | None = None, short: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help text; the CLI and recipes read both from here.

    `cli=False` keeps a field out of the flags (set by the caller, e.g. run's overrides).
    """
    meta = {"help": help, "positional": positional, "choices": choices, "short": short, "cli": cli}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def at_least(flag: str, value: Any, minimum: int, unit: str = "") -> None:
    """Refuse `value` below `minimum` in one line (None, an unset optional flag, passes)."""
    if value is not None and int(value) < minimum:
        raise PosinterpError(f"{flag} {value} must be at least {minimum}{unit}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None` / `Optional[X]` annotations."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(tp: Any):
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return Path
    return str


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass `cls` (positional fields become positionals).

    A class with an `epilog()` classmethod gets its text under the flags, line breaks kept (run lists
    the recipe keys it takes as dotted overrides there).
    """
    if callable(getattr(cls, "epilog", None)):
        parser.epilog = cls.epilog()
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, optional = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if has_default and default not in (None, "", [], {}):
            help_text += f" (default: {default})"
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=_converter(tp), help=help_text,
                                nargs="?" if has_default else None,
                                default=default if has_default else None)
            continue
        names = [_flag(f.name)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        if tp is bool:
            parser.add_argument(*names, dest=f.name, nargs="?", const=True, type=_parse_bool,
                                default=argparse.SUPPRESS, help=help_text)
            continue
        parser.add_argument(*names, dest=f.name, type=_converter(tp), default=argparse.SUPPRESS,
                            choices=f.metadata.get("choices"), help=help_text,
                            required=not has_default and not optional)


def from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build `cls` from a recipe section; unknown keys are refused with the nearest valid name."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            near = difflib.get_close_matches(name, list(fields), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(fields)}"
            raise PosinterpError(f"unknown key '{where}{key}'{hint}")
        tp, _ = _base_type(hints[name])
        if value is not None and tp is Path:
            value = Path(value)
        elif value is not None and tp is float and isinstance(value, int | str):
            value = float(value)
        elif value is not None and tp is int and isinstance(value, str):
            value = int(value)
        elif value is not None and tp is bool and isinstance(value, str):
            value = _parse_bool(value)
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """A dataclass as JSON-ready plain values (Paths as strings)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def as_config(cls: type[T], cfg: Any = None, kwargs: Mapping[str, Any] | None = None) -> T:
    """Let a verb be called as `verb(Config(...))`, `verb(model, **flags)` or `verb(**flags)`."""
    if isinstance(cfg, cls):
        if kwargs:
            return dataclasses.replace(cfg, **kwargs)
        return cfg
    kwargs = dict(kwargs or {})
    if cfg is not None:
        positional = [f.name for f in dataclasses.fields(cls) if f.metadata.get("positional")]
        if not positional:
            raise TypeError(f"{cls.__name__} takes keyword arguments only")
        kwargs[positional[0]] = cfg
    return cls(**kwargs)


def check_keys(cls: type, data: Mapping[str, Any] | None, where: str = "", skip: tuple[str, ...] = ()) -> None:
    """Refuse keys that are not fields of `cls` (or are set by the caller), naming the nearest one."""
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    for key in data or {}:
        name = str(key).replace("-", "_")
        if name in skip:
            raise PosinterpError(f"'{where}{key}' is set by the pipeline; remove it from the recipe")
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
            raise PosinterpError(f"unknown key '{where}{key}'{hint}")
