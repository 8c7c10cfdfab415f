"""`eval.ruler` in a recipe: a `ruler <row>` stage per row, planned at the passkey lengths, priced, trimmed
first by a budget, shown by --dry-run, stamped, run end to end with its report section; an unchanged rerun does
nothing and new ruler samples rerun only the ruler stages.

A random 2-layer llama (window 256) extended ×2 by PI; rows original and pi; perplexity and passkey at 256 and
512 (the original row: 256 only); RULER's fwe at the passkey lengths, 1 sample, 8 answer tokens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from posinterp.errors import PosinterpError
from posinterp.run import run, stamps

STAGES = ["extend", "ppl original", "passkey original", "ruler original", "ppl pi", "passkey pi", "ruler pi"]
WORDS = "the a river stone light north cold window book letter house road garden old quiet long story".split()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer) -> Path:
    """root/model (tiny llama, window 256) and root/heldout (perplexity text)."""
    import random

    from conftest import save_tiny

    root = tmp_path_factory.mktemp("ruler-run")
    save_tiny(root / "model", smol_tokenizer, window=256)
    rng = random.Random(0)
    (root / "heldout").mkdir()
    (root / "heldout" / "doc0.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(1200)) + "\n")
    return root


def _recipe(root: Path, name: str, ruler: dict | None = None, rows: tuple = ("original", "pi")) -> Path:
    data = {
        "name": name, "model": str(root / "model"), "out": str(root / name),
        "extend": {"method": "pi", "factor": 2},
        "train": {"data": str(root / "heldout"), "seq_len": 64, "steps": 2, "precision": "fp32", "tensorboard": False},
        "eval": {"rows": list(rows), "windows": [256, 512], "passkey_lengths": [256, 512],
                 "ppl": {"data": str(root / "heldout"), "max_docs": 1, "max_tokens": 600, "stride": [128, 128],
                         "dtype": "float32"},
                 "passkey": {"trials": 1, "max_new_tokens": 4, "dtype": "float32"},
                 "ruler": ruler if ruler is not None else {"tasks": ["fwe"], "samples": 1, "max_new_tokens": 8,
                                                           "dtype": "float32"}},
    }
    path = root / f"{name}.yaml"
    path.write_text(f"# posinterp run {path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _lines(caplog) -> dict[str, str]:
    found = {}
    for rec in caplog.records:
        m = re.match(r"^\[\d+/\d+\] (.+?): (.*)$", rec.getMessage())
        if m:
            found[m.group(1)] = m.group(2)
    return found


def _run(caplog, recipe: Path, **kwargs) -> dict[str, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="posinterp"):
        run(recipe, **kwargs)
    return _lines(caplog)


def _done(lines: dict[str, str]) -> set[str]:
    return {stage for stage, said in lines.items() if said.startswith("done")}


def _speed():
    """A stand-in for the probe: prices without timing anything."""
    from posinterp import speed

    return speed.Speed("fp32", {256: 0.01, 512: 0.03}, {256: 0.1, 512: 0.3}, 0.01, 1e-5, {256: 1e-4, 512: 4e-4}, 2)


# -- planned, refused, priced: no stage runs ----------------------------------------------------------------
def test_each_row_gets_a_ruler_stage_at_the_passkey_lengths_or_its_own(inputs):
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan

    recipe, _ = load_recipe(_recipe(inputs, "plan"))
    stages = {s.name: s for s in plan(recipe, inputs / "plan")}
    assert list(stages) == STAGES
    original, pi = stages["ruler original"].config, stages["ruler pi"].config
    assert (original.lengths, pi.lengths) == ("256", "256,512")  # the original row keeps those up to L
    assert pi.out == inputs / "plan" / "eval" / "pi" / "ruler" and pi.model == str(inputs / "plan" / "extended")
    assert (pi.tasks, pi.samples, pi.max_new_tokens, pi.reference) == ("fwe", 1, 8, None)
    assert stages["ruler pi"].describe == "RULER (fwe) of PI, 0 fine-tune steps at [256, 512]"
    # its own lengths (a YAML list or the flag's text); none at or below L: no stage for the original row
    for given in ([512], "512"):
        recipe, _ = load_recipe(_recipe(inputs, "plan", {"tasks": "fwe", "lengths": given}))
        stages = {s.name: s.config for s in plan(recipe, inputs / "plan")}
        assert "ruler original" not in stages and stages["ruler pi"].lengths == "512"
        assert stages["ruler pi"].tasks == "fwe" and stages["ruler pi"].samples is None
    # no section, or null: no ruler stage (the recipes written before it plan as they did)
    recipe, _ = load_recipe(_recipe(inputs, "plan"), ["--eval.ruler", "null"])
    assert recipe.eval.ruler is None and not [s for s in plan(recipe, inputs / "plan") if s.name.startswith("ruler")]
    assert not (inputs / "plan").exists()


@pytest.mark.parametrize("override, message", [
    (["--eval.ruler.samles", "2"], r"^unknown key 'eval\.ruler\.samles'; did you mean 'samples'"),
    (["--eval.ruler.tasks", "[fwe, niah_singel_1]"], r"^eval\.ruler\.tasks 'niah_singel_1' is not a RULER task"),
    (["--eval.ruler.samples", "0"], r"^eval\.ruler\.samples 0 must be at least 1"),
    (["--eval.ruler.lengths", "[256, x]"], r"^eval\.ruler\.lengths '256,x' is not a list of token counts"),
    (["--eval.ruler.reference", "x"], r"^'eval\.ruler\.reference' is set by the pipeline"),
    (["--eval.ruler", "5"], r"^'eval\.ruler' must be a mapping of keys"),
    (["--eval.ruler.tasks", "vt"], r"^eval\.ruler\.lengths 256 is too short for vt: .* drop it from eval\.ruler\.tasks "
                                   r"\(eval\.ruler\.lengths is not set: the passkey lengths are used\)$"),
])
def test_a_bad_ruler_key_is_refused_in_one_line_before_anything_is_written(inputs, override, message):
    with pytest.raises(PosinterpError, match=message) as err:
        run(_recipe(inputs, "refused"), overrides=override)
    assert "\n" not in str(err.value)
    assert not (inputs / "refused").exists()


def test_ruler_stages_are_priced_as_prefills_plus_answers_and_trimmed_first(inputs):
    from posinterp.run.budget import fit_budget, stage_estimates
    from posinterp.run.estimate import LOAD_S, ruler_seconds
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan, scale

    sp = _speed()
    hand = LOAD_S + sum(3 * (sp.forward_s(n) + 8 * sp.decode_token_s(n)) for n in (256, 512))
    assert ruler_seconds(sp, lengths=[256, 512], tasks=["fwe"], samples=3, max_new_tokens=8) == pytest.approx(hand)
    # two tasks, RULER's answer tokens each (fwe 50, vt 30), the protocol's samples (10 up to 4096)
    two = LOAD_S + 10 * (2 * sp.forward_s(256) + 80 * sp.decode_token_s(256))
    assert ruler_seconds(sp, lengths=[256], tasks=["fwe", "vt"], samples=None) == pytest.approx(two)
    recipe, _ = load_recipe(_recipe(inputs, "priced", {"tasks": "fwe", "samples": 3, "max_new_tokens": 8}))
    sc = scale(recipe)
    est = stage_estimates(plan(recipe, inputs / "priced", sc=sc), sp)
    assert est["ruler pi"] == pytest.approx(hand) and set(est) == set(STAGES)
    one = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, ruler=dataclasses.replace(
        recipe.eval.ruler, samples=1)))
    full, fewer = sum(est.values()), sum(stage_estimates(plan(one, inputs / "priced", sc=sc), sp).values())
    trimmed, _, est, trims = fit_budget(recipe, inputs / "priced", False, sc, sp, (full + fewer) / 2)
    assert trims == ["RULER samples 3 → 1 per task and length"] and trimmed.eval.ruler.samples == 1
    assert trimmed.eval.passkey == recipe.eval.passkey and sum(est.values()) == pytest.approx(fewer)
    assert not (inputs / "priced").exists()


def test_dry_run_lists_the_ruler_stages_and_their_work(inputs, capsys):
    plan = run(_recipe(inputs, "dry"), dry_run=True)
    out = capsys.readouterr().out
    assert plan["ruler"] == ("1 task (fwe), 1 sample(s) per task and length: 3 prompts, 1,024 prompt tokens to "
                             "prefill and at most 24 to decode, over 2 rows (original at 256; pi at 256,512)")
    assert f"ruler: {plan['ruler']}" in out and re.search(r"\[to run\] ruler pi +→ .*ruler", out), out
    assert [s["stage"] for s in plan["stages"]] == STAGES and not (inputs / "dry").exists()


# -- run: stamped, reported, rerun only as needed -----------------------------------------------------------
@pytest.fixture(scope="module")
def base(inputs) -> Path:
    summary = run(_recipe(inputs, "base"))
    assert set(summary["pi"]["ruler"]["effective_length"]) == {"absolute", "relative"}
    return inputs / "base"


def test_the_ruler_stages_run_write_their_stamp_and_the_report_section(base):
    for row, lengths in (("original", [256]), ("pi", [256, 512])):
        folder = base / "eval" / row / "ruler"
        stamp = json.loads((folder / stamps.STAMP).read_text())
        assert stamp["stage"] == f"ruler {row}" and stamp["settings"]["samples"] == 1
        assert stamp["settings"]["tasks"] == "fwe" and stamp["settings"]["lengths"] == ",".join(map(str, lengths))
        result = json.loads((folder / "results.json").read_text())
        assert result["kind"] == "ruler" and result["lengths"] == lengths and len(result["samples"]) == len(lengths)
    timings = json.loads((base / "timings.json").read_text())
    assert set(timings) == set(STAGES)
    report = (base / "report.md").read_text()
    assert "\n## RULER\n" in report
    section = report.split("\n## RULER\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[0].startswith("|  | RULER average @ 256 | RULER average @ 512 | effective length (≥ 85.6) | ")
    assert re.search(r"\| effective length \(≥ 0\.856 × [\d.]+ = [\d.]+\) \|$", table[0]), table[0]
    assert table[2].startswith("| original model (window L) | ") and table[2].split(" | ")[2] == "—"
    assert table[3].startswith("| PI, 0 fine-tune steps | ")
    assert "RULER's synthetic tasks (1: fwe), 1 sample(s) per task and length, seed 0" in report
    assert "relative: ≥ 0.856 × B, B = " in report and "within its window 256 (256)" in report


def test_an_unchanged_rerun_does_nothing_and_new_ruler_samples_rerun_only_the_ruler_stages(base, inputs, caplog):
    recipe = _recipe(inputs, "base")
    files = {p: p.stat().st_mtime_ns for p in (base / "eval").rglob("*") if p.is_file()}
    assert _done(_run(caplog, recipe)) == set(STAGES)
    assert {p: p.stat().st_mtime_ns for p in files} == files
    override = ["--eval.ruler.samples", "2"]
    plan = run(recipe, overrides=override, dry_run=True)
    assert {s["stage"] for s in plan["stages"] if s["status"] != "done"} == {"ruler original", "ruler pi"}
    lines = _run(caplog, recipe, overrides=override)
    assert set(lines) - _done(lines) == {"ruler original", "ruler pi"}, lines
    assert lines["ruler pi"] == "samples 1 → 2, rerunning" == lines["ruler original"]
    result = json.loads((base / "eval" / "pi" / "ruler" / "results.json").read_text())
    assert result["samples_per_length"] == {"256": 2, "512": 2}
    assert _done(_run(caplog, recipe, overrides=override)) == set(STAGES)
    _run(caplog, recipe)  # back to the recipe


def test_without_an_original_row_only_the_absolute_rule(base, tmp_path):
    from posinterp.run import ruler_report

    lines, per = ruler_report.section(base, ["pi"])
    assert set(per) == {"pi"} and per["pi"]["effective_length"]["relative"] is None
    text = "\n".join(lines)
    assert "| effective length (relative) |" in text and "relative: not computed, no original row" in text
    assert ruler_report.section(tmp_path, ["original", "pi"]) == ([], {})
