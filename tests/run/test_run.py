"""Recipes load and are checked against the verbs' own config dataclasses; dry runs plan without computing."""

from __future__ import annotations

from pathlib import Path

import pytest

from posinterp.errors import PosinterpError
from posinterp.run.pipeline import run
from posinterp.run.recipe import apply_overrides, load_recipe

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_start_with_their_command(path):
    recipe, _ = load_recipe(path)
    assert path.read_text().startswith(f"# posinterp run recipes/{path.name}")
    assert recipe.model and recipe.out


def test_overrides_and_unknown_keys(tmp_path):
    assert apply_overrides({"train": {"steps": 20}}, ["--train.steps", "50", "--eval.windows=[1,2]"]) == {
        "train": {"steps": 50}, "eval": {"windows": [1, 2]}}
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nmodel: smollm2-135m\nout: o\nextend:\n  factor: 2\ntrain:\n  stpes: 3\n")
    with pytest.raises(PosinterpError, match="unknown key 'train.stpes'; did you mean 'steps'"):
        load_recipe(bad)
    with pytest.raises(PosinterpError, match="did you mean 'train'"):
        load_recipe(bad, ["--trian.steps", "3"])


def test_dry_run_of_the_7b_stand_in_prints_the_plan(capsys):
    plan = run(RECIPES[0].parent / "llama2-7b-32k.yaml", dry_run=True)
    out = capsys.readouterr().out
    assert plan["original_length"] == 4096 and plan["target_length"] == 32768
    assert 6.5e9 < plan["estimate"]["params"] < 7e9 and "memory per device" in out
    assert all(s["status"] == "to run" for s in plan["stages"])
    # nothing of a 7B can be timed here: the time is the recipe's assumption, and the line says so
    assert "ASSUMED (not measured here)" in out and plan["time"]["source"].startswith("assumed")



def test_a_stride_per_window_follows_each_rows_windows(tmp_path):
    """The CPU recipe gives one stride per window; the original row keeps only its windows and their strides."""
    from posinterp.evals import perplexity as pp
    from posinterp.run.stages import plan

    recipe, data = load_recipe(RECIPES[0].parent / "smollm2-16k-cpu.yaml")
    seen = {s.config.out.parent.name: s.config for s in plan(recipe, tmp_path) if s.name.startswith("ppl ")}
    windows, strides = recipe.eval.windows, data["eval"]["ppl"]["stride"]
    assert len(windows) == len(strides) == 3 and len(set(strides)) > 1
    want = dict(zip(sorted(windows), strides))
    assert pp.strides_for(windows[:2], seen["original"].stride) == {w: want[w] for w in sorted(windows)[:2]}
    assert pp.strides_for(windows, seen["pi_ft"].stride) == want


# -- typed sections: every bad value refused at load, before any stage, nothing written ----------
def _recipe(tmp_path: Path, model: Path, rows: list[str], extend: str = "  factor: 2\n", train: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny\nmodel: {model}\nout: {tmp_path / 'run'}\nextend:\n{extend}"
                    f"train:\n  steps: 3\n  seq_len: 128\n  lr: 1.0e-3\n  seed: 7\n  data: gutenberg\n{train}"
                    f"eval:\n  rows: [{', '.join(rows)}]\n  windows: [64, 256, 512]\n  passkey_lengths: [128, 512]\n"
                    f"  ppl:\n    stride: [32, 128, 256]\n  passkey:\n    trials: 2\n")
    return path


@pytest.mark.parametrize("override, message", [
    (["--extend.factor", "-1"], r"^extend\.factor -1\.0 must be a finite number > 1"),
    (["--extend.factor", "null", "--extend.target_length", "100"], r"^extend\.target_length 100 must be larger than the original window 256"),
    (["--train.lr", "-1"], r"^train\.lr -1\.0 must be a positive finite number"),
    (["--train.steps", "[1, 2]"], r"^train\.steps \[1, 2\] must be a whole number"),
    (["--train.warmup", "-3"], r"train\.warmup -3"),
    (["--train.rope", "pi:2"], r"^'train\.rope' is set by the pipeline"),
    (["--eval.ppl.stride", "[32, 128]"], r"eval\.ppl\.stride .* gives 2 strides for 3 windows"),
    (["--eval.ppl.stride", "64"], r"eval\.ppl\.stride 64 must be smaller than the window 64"),
    (["--eval.passkey.trials", "0"], r"^eval\.passkey\.trials 0 must be at least 1"),
    (["--eval.passkey.dtype", "int8"], r"eval\.passkey\.dtype 'int8'"),
    (["--eval.windows", "[64, x]"], r"^eval\.windows .* is not a list of token counts"),
    (["--eval.rows", "[pi_ft, yarn_fit]"], r"did you mean 'yarn_ft'"),
    (["--train.seq_len", "1024"], r"^train\.seq_len 1024 exceeds the window 512 of row pi_ft"),
])
def test_a_bad_recipe_value_is_refused_in_one_line_before_any_stage(tiny_dir, tmp_path, monkeypatch, override,
                                                                   message):
    from posinterp.model import extend
    from posinterp.train import loop

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran")

    monkeypatch.setattr(extend, "extend", no_stage)
    monkeypatch.setattr(loop, "train", no_stage)
    path = _recipe(tmp_path, tiny_dir(), ["original", "pi", "pi_ft"])
    with pytest.raises(PosinterpError, match=message) as err:
        run(path, overrides=override)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # no run folder, no recipe.resolved.yaml


def test_sections_are_the_verbs_config_dataclasses(tiny_dir, tmp_path):
    from posinterp.evals.passkey import PasskeyConfig
    from posinterp.evals.perplexity import PerplexityConfig
    from posinterp.model.extend import ExtendConfig
    from posinterp.train.config import TrainConfig

    recipe, data = load_recipe(_recipe(tmp_path, tiny_dir(), ["pi"]), ["--train.lr", "2e-4"])
    assert isinstance(recipe.extend, ExtendConfig) and recipe.extend.factor == 2.0
    assert isinstance(recipe.train, TrainConfig) and recipe.train.lr == 2e-4 and recipe.train.steps == 3
    assert isinstance(recipe.eval.ppl, PerplexityConfig) and recipe.eval.ppl.stride == "32,128,256"
    assert isinstance(recipe.eval.passkey, PasskeyConfig) and recipe.eval.passkey.trials == 2
    assert data["train"]["lr"] == 2e-4 and "checkpoint_dir" not in data["train"]  # the mapping as written


# -- rows: every <method>_ft fine-tunes with the same recipe.train, plan() only ------------------
def _by_name(stages):
    return {s.name: s.config for s in stages}


def test_every_method_row_gets_its_stages_and_the_factor_from_target_length(tiny_dir, tmp_path):
    """Window 256, target_length 768: factor 3 for every method; each `<method>_ft` trains with the same
    settings, PI from the extended checkpoint, the others with --rope <method>:3, no-PI with RoPE unchanged."""
    import dataclasses

    from posinterp.run.recipe import FINE_TUNED, METHOD_TITLES, ROWS
    from posinterp.run.stages import plan

    model = tiny_dir()
    run_dir = tmp_path / "run"
    recipe, _ = load_recipe(_recipe(tmp_path, model, list(ROWS), extend="  target_length: 768\n"))
    stages = _by_name(plan(recipe, run_dir))
    assert stages["extend"].target_length == 768 and stages["extend"].out == run_dir / "extended"
    trains = {name: cfg for name, cfg in stages.items() if name.startswith("train (")}
    assert {"train (PI)", "train (YaRN)", "train (NTK-aware)", "train (dynamic NTK)", "train (no PI)"} <= set(trains)
    # every <method>_ft row (a method added later too): PI from the extended checkpoint, the others on the fly
    want = {f"train ({METHOD_TITLES[m]})": (str(model), f"{m}:3", f"{m}-ft") for m in FINE_TUNED.values()}
    want |= {"train (PI)": (str(run_dir / "extended"), "none", "pi-ft"),
             "train (no PI)": (str(model), "none", "nopi-ft")}
    assert sorted(trains) == sorted(want)
    pipeline = {"model", "rope", "out", "checkpoint_dir"}
    same = {k: v for k, v in dataclasses.asdict(trains["train (PI)"]).items() if k not in pipeline}
    for name, cfg in trains.items():
        assert (cfg.model, cfg.rope, cfg.out.name) == want[name]
        assert cfg.checkpoint_dir == run_dir / f"{want[name][2]}-checkpoints" and cfg.resume
        assert not cfg.allow_beyond_window  # seq_len 128 fits every window
        assert {k: v for k, v in dataclasses.asdict(cfg).items() if k not in pipeline} == same
    assert (same["steps"], same["seq_len"], same["lr"], same["seed"], same["data"]) == (3, 128, 1e-3, 7, "gutenberg")
    # the evals: fine-tuned rows load their own checkpoint as configured; 0-shot methods at the same factor
    evals = {name.split(" ", 1)[1]: cfg for name, cfg in stages.items() if name.startswith("passkey ")}
    assert (evals["pi"].model, evals["pi"].rope) == (str(run_dir / "extended"), "none")
    for method in ("yarn", "ntk", "dynamic"):
        assert (evals[method].model, evals[method].rope) == (str(model), f"{method}:3")
        assert (evals[f"{method}_ft"].model, evals[f"{method}_ft"].rope) == (str(run_dir / f"{method}-ft"), "none")
    assert evals["nopi_ft"].model == str(run_dir / "nopi-ft") and evals["nopi_ft"].allow_beyond_window
    assert evals["extrapolation"].allow_beyond_window and not evals["pi_ft"].allow_beyond_window
    assert evals["original"].lengths == "128" and evals["pi_ft"].lengths == "128,512"
    assert stages["ppl original"].windows == "64,256" and stages["ppl original"].stride == "32,128"


def test_a_fractional_factor_and_a_given_original_length_reach_every_row(tiny_dir, tmp_path):
    from posinterp.run.stages import plan

    model = tiny_dir()
    recipe, _ = load_recipe(_recipe(tmp_path, model, ["yarn", "yarn_ft"],
                                    extend="  target_length: 192\n  original_length: 128\n"))
    stages = _by_name(plan(recipe, tmp_path / "run"))
    assert stages["train (YaRN)"].rope == "yarn:1.5" and stages["train (YaRN)"].original_length == 128
    assert stages["passkey yarn"].rope == "yarn:1.5" and stages["passkey yarn"].original_length == 128


def test_nopi_ft_beyond_the_window_is_direct_fine_tuning(tiny_dir, tmp_path):
    """No-PI at seq_len > L trains past the window with RoPE unchanged (the paper's baseline); a method row
    whose extended window is below seq_len is refused before anything is written."""
    from posinterp.run.stages import plan

    recipe, _ = load_recipe(_recipe(tmp_path, tiny_dir(), ["pi_ft", "nopi_ft"]), ["--train.seq_len", "512"])
    stages = _by_name(plan(recipe, tmp_path / "run"))
    assert stages["train (no PI)"].allow_beyond_window and stages["train (no PI)"].rope == "none"
    assert not stages["train (PI)"].allow_beyond_window
    recipe, _ = load_recipe(_recipe(tmp_path, tiny_dir(name="t2"), ["nopi_ft", "yarn_ft"]), ["--train.seq_len", "768"])
    with pytest.raises(PosinterpError, match="train.seq_len 768 exceeds the window 512 of row yarn_ft"):
        plan(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(PosinterpError, match="'train.allow_beyond_window' is set by the pipeline"):
        load_recipe(_recipe(tmp_path, tiny_dir(name="t3"), ["nopi_ft"]), ["--train.allow_beyond_window", "true"])


def test_force_reaches_every_stage(tiny_dir, tmp_path):
    from posinterp.run.stages import plan

    recipe, _ = load_recipe(_recipe(tmp_path, tiny_dir(), ["pi", "pi_ft"]))
    stages = plan(recipe, tmp_path / "run", force=True)
    assert all(s.config.force for s in stages)
    assert not next(s.config for s in stages if s.name == "train (PI)").resume


def test_the_extended_checkpoint_is_written_only_for_rows_that_use_it(tiny_dir, tmp_path):
    from posinterp.run.stages import plan

    model = tiny_dir()
    recipe, _ = load_recipe(_recipe(tmp_path, model, ["yarn", "yarn_ft", "nopi_ft"]))
    assert [s.name for s in plan(recipe, tmp_path / "run") if not s.name.startswith(("ppl", "passkey"))] == [
        "train (YaRN)", "train (no PI)"]
    recipe, _ = load_recipe(_recipe(tmp_path, model, ["yarn", "pi_ft"]))
    assert [s.name for s in plan(recipe, tmp_path / "run")][:2] == ["extend", "train (PI)"]
