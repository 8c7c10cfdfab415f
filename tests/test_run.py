"""Recipes load and are checked against the verbs' own config dataclasses; dry runs plan without computing."""

from __future__ import annotations

from pathlib import Path

import pytest

from posinterp.errors import PosinterpError
from posinterp.recipe import apply_overrides, load_recipe
from posinterp.run import run

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load_and_start_with_their_command(path):
    recipe, _ = load_recipe(path)
    assert path.read_text().startswith(f"# posinterp run recipes/{path.name}")
    assert recipe.model and recipe.out


def test_overrides_and_unknown_keys(tmp_path):
    assert apply_overrides({"train": {"steps": 20}}, ["--train.steps", "50", "--eval.windows=[1,2]"]) == {
        "train": {"steps": 50}, "eval": {"windows": [1, 2]}}
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nmodel: smollm2-135m\nout: o\ntrain:\n  stpes: 3\n")
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



def test_a_stride_per_window_follows_each_rows_windows(tmp_path, monkeypatch):
    """The CPU recipe gives one stride per window; the original row keeps only its windows and their strides."""
    from posinterp.evals import perplexity as pp
    from posinterp.run import plan

    seen = {}
    monkeypatch.setattr(pp, "perplexity", lambda cfg: seen.setdefault(cfg.out.parent.name, cfg))
    recipe, _ = load_recipe(RECIPES[0].parent / "smollm2-16k-cpu.yaml")
    for stage in plan(recipe, tmp_path):
        if stage.name.startswith("ppl "):
            stage.action()
    windows, strides = recipe.eval.windows, recipe.eval.ppl["stride"]
    assert len(windows) == len(strides) == 3 and len(set(strides)) > 1
    want = dict(zip(sorted(windows), strides))
    assert pp.strides_for(windows[:2], seen["original"].stride) == {w: want[w] for w in sorted(windows)[:2]}
    assert pp.strides_for(windows, seen["pi_ft"].stride) == want
