"""Dataclass-driven flags and recipe sections share one default."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from posinterp.cli import add_arguments, arg, as_config, from_mapping, from_namespace
from posinterp.errors import PosinterpError


@dataclass
class Demo:
    model: str = arg(help="model", positional=True)
    seq_len: int = arg(4096, help="tokens per sequence")
    lr: float = arg(2e-5, help="peak learning rate")
    lora: bool = arg(False, help="train LoRA adapters")
    out: Path | None = arg(None, help="output folder")


def test_flags_from_fields():
    p = argparse.ArgumentParser()
    add_arguments(p, Demo)
    cfg = from_namespace(Demo, p.parse_args(["m", "--seq-len", "8", "--lora"]))
    assert cfg == Demo("m", 8, 2e-5, True, None)
    assert from_namespace(Demo, p.parse_args(["m"])).seq_len == 4096  # the dataclass default
    assert "tokens per sequence (default: 4096)" in p.format_help()


def test_mapping_refuses_unknown_with_nearest():
    assert from_mapping(Demo, {"model": "m", "seq-len": "16", "lr": "1e-4"}) == Demo("m", 16, 1e-4)
    with pytest.raises(PosinterpError, match="unknown key 'train.seq_lne'; did you mean 'seq_len'"):
        from_mapping(Demo, {"model": "m", "seq_lne": 3}, where="train.")


def test_as_config_forms():
    assert as_config(Demo, "m", {"seq_len": 2}).seq_len == 2
    assert as_config(Demo, Demo("m"), {"lr": 1.0}).lr == 1.0
    assert as_config(Demo, None, {"model": "x"}).model == "x"


def test_every_verb_parses_help():
    from posinterp.__main__ import VERBS, build_parser

    parser = build_parser()
    for words in VERBS:
        with pytest.raises(SystemExit) as ex:
            parser.parse_args([*words, "--help"])
        assert ex.value.code == 0


def test_model_verbs_share_the_model_flags():
    """train and every eval that loads one model take the same model flags, from one ModelArgs."""
    import dataclasses

    from posinterp.evals.original import OriginalConfig
    from posinterp.evals.passkey import PasskeyConfig
    from posinterp.evals.perplexity import PerplexityConfig
    from posinterp.evals.summarize import SummarizeConfig
    from posinterp.model.loader import ModelArgs
    from posinterp.train.config import TrainConfig

    shared = {f.name: f for f in dataclasses.fields(ModelArgs)}
    for cls in (TrainConfig, PasskeyConfig, PerplexityConfig, OriginalConfig, SummarizeConfig):
        assert issubclass(cls, ModelArgs), cls
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, field in shared.items():
            assert fields[name].default == field.default and fields[name].metadata == field.metadata, (cls, name)
        precision = "precision" if cls is TrainConfig else "dtype"
        assert fields[precision].default == "auto", cls


def test_help_shows_the_same_model_flags_everywhere(capsys):
    from posinterp.__main__ import build_parser

    parser = build_parser()
    for verb in (["train"], ["eval", "passkey"], ["eval", "ppl"], ["eval", "original"], ["eval", "summarize"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*verb, "--help"])
        text = capsys.readouterr().out
        for flag in ("--rope", "--original-length", "--device", "--seed"):
            assert flag in text, (verb, flag)


def test_run_help_lists_the_recipe_keys_with_their_defaults(capsys):
    """`run --help` ends with every recipe key as a dotted override and its default, generated from the
    sections' dataclasses (so a new TrainConfig field shows up without editing any list)."""
    import dataclasses

    from posinterp.__main__ import build_parser
    from posinterp.run.recipe import PIPELINE_SET, override_keys
    from posinterp.train.config import TrainConfig

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = capsys.readouterr().out
    lines = text.splitlines()
    line = next(s for s in lines if s.split()[:1] == ["--train.steps"])
    assert line.split()[1] == "1000" and "optimizer steps" in line
    for key, default in (("--eval.rows", "[original,extrapolation,pi,pi_ft,nopi_ft,yarn]"),
                         ("--eval.ppl.stride", "256"), ("--eval.passkey.trials", "10"), ("--extend.method", "pi"),
                         ("--eval.windows", "[2048,8192,16384]"), ("--train.seq_len", "null"),
                         ("--train.lora", "false")):
        assert any(s.split()[:2] == [key, default] for s in lines), key
    assert "(paper: 10%)" in text  # argparse's %% escape undone
    assert all(len(s) <= 104 for s in lines if s.lstrip().startswith("--train.") and "q_proj" not in s)
    # generated, not hand-written: every TrainConfig field a recipe may set, and none the pipeline sets
    train = {k for where, k, _ in override_keys() if where == "train"}
    assert train == {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)} - {
        f"train.{k}" for k in PIPELINE_SET["train"]}
    assert "--train.out " not in text and "--eval.ppl.model" not in text
    assert text.index("  extend:") < text.index("  train:") < text.index("  eval:") < text.index("  eval.ppl:")
