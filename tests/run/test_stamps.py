"""Stages are done only when their stamp (`stage.json`) matches the plan: a changed setting reruns its stage and
every stage below it, saying why in one line; more steps continue a fine-tune from its checkpoint.

A random 2-layer llama (window 128) extended ×2 by PI; rows pi and pi_ft; 6 fine-tune steps at 64 tokens;
perplexity at 256 on 320 held-out tokens, passkey at 256 (one trial).
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pytest
import yaml

from posinterp.run import run, stamps

STEPS = 6
WORDS = "the a river stone light north cold window book letter house road garden old quiet long story".split()
STAGES = ["extend", "train (PI)", "ppl pi", "passkey pi", "ppl pi_ft", "passkey pi_ft"]
FOLDERS = ["extended", "pi-ft", "eval/pi/ppl", "eval/pi/passkey", "eval/pi_ft/ppl", "eval/pi_ft/passkey"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer) -> Path:
    """root/model (tiny llama, window 128), root/data (training text) and root/heldout (perplexity text)."""
    from conftest import save_tiny

    root = tmp_path_factory.mktemp("stamps")
    save_tiny(root / "model", smol_tokenizer, window=128)
    rng = random.Random(0)
    for folder, n in (("data", 3), ("heldout", 1)):
        (root / folder).mkdir()
        for i in range(n):
            (root / folder / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(1200)) + "\n")
    return root


def _recipe(root: Path, name: str, **train) -> Path:
    data = {
        "name": name, "model": str(root / "model"), "out": str(root / name),
        "extend": {"method": "pi", "factor": 2},
        "train": {"data": str(root / "data"), "seq_len": 64, "steps": STEPS, "save_every": 2, "keep": 2,
                  "lr": 1.0e-3, "warmup": 2, "shuffle_buffer": 4, "tensorboard": False, **train},
        "eval": {"rows": ["pi", "pi_ft"], "windows": [256], "passkey_lengths": [256],
                 "ppl": {"data": str(root / "heldout"), "max_docs": 1, "max_tokens": 320, "stride": [128]},
                 "passkey": {"trials": 2, "max_new_tokens": 4}},
    }
    path = root / f"{name}.yaml"
    path.write_text(f"# posinterp run {path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _lines(caplog) -> dict[str, str]:
    """stage → what the run said of it (`[i/n] stage: ...`)."""
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


def _steps(out: Path) -> list[int]:
    rows = [json.loads(x) for x in (out / "pi-ft-checkpoints" / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def _training(out: Path) -> dict:
    return json.loads((out / "pi-ft" / "posinterp.json").read_text())["training"]


@pytest.fixture(scope="module")
def base(inputs) -> Path:
    """The recipe once, in its own folder (each test that changes it works on a copy of the recipe's name)."""
    run(_recipe(inputs, "base"))
    return inputs / "base"


def test_every_stage_writes_its_stamp_and_an_unchanged_rerun_does_nothing(base, inputs, caplog):
    for name, folder in zip(STAGES, FOLDERS):
        stamp = json.loads((base / folder / stamps.STAMP).read_text())
        assert stamp["stage"] == name and set(stamp["versions"]) == {"posinterp", "torch", "transformers"}
    train = json.loads((base / "pi-ft" / stamps.STAMP).read_text())
    extend = json.loads((base / "extended" / stamps.STAMP).read_text())
    assert train["settings"]["steps"] == STEPS and "out" not in train["settings"] and "force" not in train["settings"]
    assert train["inputs"]["extend"] == extend["fingerprint"] and "data files" in train["inputs"]
    assert "model" in extend["inputs"]  # the recipe's model: its files' names, sizes and times
    files = {p: p.stat().st_mtime_ns for d in ("extended", "pi-ft", "pi-ft-checkpoints", "eval")
             for p in (base / d).rglob("*") if p.is_file()}  # the stages' outputs (the report is redrawn)
    lines = _run(caplog, _recipe(inputs, "base"))
    assert _done(lines) == set(STAGES), lines
    assert {p: p.stat().st_mtime_ns for p in files} == files and "resuming from" not in caplog.text


@pytest.mark.parametrize("override, reruns, said", [
    (["--train.lr", "2e-3"], {"train (PI)", "ppl pi_ft", "passkey pi_ft"}, "lr 0.001 → 0.002, rerunning"),
    (["--eval.passkey.trials", "1"], {"passkey pi", "passkey pi_ft"}, "trials 2 → 1, rerunning"),
])
def test_a_changed_setting_reruns_its_stage_and_every_stage_below_it(base, inputs, caplog, override, reruns, said):
    """--dry-run says what the run then does; the stages below a rerun one say which input changed."""
    recipe = _recipe(inputs, "base")
    plan = run(recipe, overrides=override, dry_run=True)
    planned = {s["stage"]: s for s in plan["stages"]}
    assert {name for name, s in planned.items() if s["status"] != "done"} == reruns, planned
    lines = _run(caplog, recipe, overrides=override)
    assert set(lines) - _done(lines) == reruns, lines
    first = next(name for name in STAGES if name in reruns)
    assert lines[first] == said and planned[first]["why"] == said, lines
    if first == "train (PI)":
        assert lines["ppl pi_ft"] == "train (PI) changed, rerunning" == planned["ppl pi_ft"]["why"]
        assert _training(base)["resumed_from"] is None and _steps(base) == list(range(1, STEPS + 1))  # from step 0
    assert _done(_run(caplog, recipe, overrides=override)) == set(STAGES)  # now done as changed
    _run(caplog, recipe)  # back to the recipe for the next case


def test_the_stamps_chain_so_a_changed_upstream_stage_changes_every_stage_below_it(base, inputs):
    """Planned stamps only, nothing runs: a new factor changes extend, and through it every stage; a new lr
    changes the fine-tune and its evaluations, not the rows that do not use it."""
    from posinterp.run.pipeline import pin_precision
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan

    def fingerprints(overrides: list[str]) -> dict[str, str]:
        recipe = pin_precision(load_recipe(_recipe(inputs, "base"), overrides)[0])  # as `run` plans it
        return {k: v["fingerprint"] for k, v in stamps.planned(plan(recipe, base)).items()}

    same = fingerprints([])
    assert {name: stamps.read(base / folder / stamps.STAMP)["fingerprint"] for name, folder in zip(STAGES, FOLDERS)
            } == same
    factor = fingerprints(["--extend.factor", "3"])
    assert all(factor[k] != same[k] for k in STAGES)
    lr = fingerprints(["--train.lr", "2e-3"])
    assert {k for k in STAGES if lr[k] != same[k]} == {"train (PI)", "ppl pi_ft", "passkey pi_ft"}


def test_changed_text_or_new_rows_run_only_what_they_touch(base, inputs, caplog):
    recipe = _recipe(inputs, "base")
    held = inputs / "heldout" / "doc0.txt"
    text = held.read_text()
    held.write_text("quiet " + text)
    try:
        lines = _run(caplog, recipe)
    finally:
        held.write_text(text)
    assert set(lines) - _done(lines) == {"ppl pi", "ppl pi_ft"}, lines
    assert lines["ppl pi"] == "data files changed, rerunning", lines
    _run(caplog, recipe)
    lines = _run(caplog, recipe, overrides=["--eval.rows", "[pi, pi_ft, yarn]"])
    assert set(lines) - _done(lines) == {"ppl yarn", "passkey yarn"}, lines
    assert not lines["ppl yarn"].endswith("rerunning")  # new: the stage's description


def test_an_output_from_an_earlier_version_reruns_and_says_so(base, inputs, caplog):
    (base / "eval" / "pi" / "ppl" / stamps.STAMP).unlink()
    lines = _run(caplog, _recipe(inputs, "base"))
    assert set(lines) - _done(lines) == {"ppl pi"}, lines
    assert lines["ppl pi"] == f"{base / 'eval' / 'pi' / 'ppl'} has no stage.json (an earlier posinterp made it), rerunning"
    assert (base / "eval" / "pi" / "ppl" / stamps.STAMP).is_file()


def test_more_steps_train_on_from_the_checkpoint(inputs, caplog):
    recipe = _recipe(inputs, "grow")
    run(recipe)
    out = inputs / "grow"
    before = (out / "pi-ft-checkpoints" / "metrics.jsonl").read_text().splitlines()
    lines = _run(caplog, recipe, overrides=["--train.steps", str(STEPS + 2)])
    assert lines["train (PI)"] == f"steps {STEPS} → {STEPS + 2}, training on from step {STEPS}", lines
    assert set(lines) - _done(lines) == {"train (PI)", "ppl pi_ft", "passkey pi_ft"}, lines
    assert f"resuming from {out / 'pi-ft-checkpoints' / f'step-{STEPS:08d}'}" in caplog.text
    training = _training(out)
    assert training["steps"] == STEPS + 2 and training["steps_this_run"] == 2
    assert training["resumed_from"].endswith(f"step-{STEPS:08d}")
    after = (out / "pi-ft-checkpoints" / "metrics.jsonl").read_text().splitlines()
    assert after[:len(before)] == before and _steps(out) == list(range(1, STEPS + 3))  # the first 6 kept


def test_a_budget_trim_is_done_for_the_same_budget_and_a_larger_one_grows_it(inputs, caplog, monkeypatch):
    """1 s fits nothing: the smallest plan runs (5 steps, one passkey trial). The same budget again: done, though
    the probe measures this machine slower each time. 2 h fits the whole recipe: the fine-tune trains on from
    step 5, and --dry-run says so first."""
    from posinterp import speed
    from posinterp.run import estimate
    from posinterp.run.budget import MIN_STEPS

    probes = []

    def probe(model, **kwargs):  # a stand-in for the 10-s probe, slower each time
        probes.append(model)
        k = len(probes)
        return speed.Speed("fp32", {64: 0.01 * k, 128: 0.03 * k}, {64: 0.1 * k, 128: 0.3 * k}, 0.01, 1e-5,
                           {64: 1e-4, 128: 4e-4}, 2)

    monkeypatch.setattr(estimate, "measure_speed", probe)

    recipe = _recipe(inputs, "budget", steps=MIN_STEPS + 3)
    out = inputs / "budget"
    run(recipe, budget="1s")
    assert _training(out)["steps"] == MIN_STEPS
    assert _done(_run(caplog, recipe, budget="1s")) == set(STAGES)
    plan = run(recipe, budget="2h", dry_run=True)
    planned = {s["stage"]: s for s in plan["stages"]}
    assert planned["train (PI)"]["status"] == "resume" and planned["extend"]["status"] == "done"
    assert planned["train (PI)"]["why"] == f"steps {MIN_STEPS} → {MIN_STEPS + 3}, training on from step {MIN_STEPS}"
    lines = _run(caplog, recipe, budget="2h")
    assert lines["train (PI)"] == planned["train (PI)"]["why"], lines
    assert lines["passkey pi"] == "trials 1 → 2, rerunning", lines
    training = _training(out)
    assert training["steps"] == MIN_STEPS + 3 and training["resumed_from"].endswith(f"step-{MIN_STEPS:08d}")
    assert _steps(out) == list(range(1, MIN_STEPS + 4)) and len(probes) == 4


# -- the decision alone, on stamps and checkpoint folders made by hand ------------------------------
class _Cfg:
    def __init__(self, folder: Path) -> None:
        self.checkpoint_dir = folder


class _Stage:
    def __init__(self, tmp_path: Path) -> None:
        self.name, self.output, self.config = "train (PI)", tmp_path / "pi-ft", _Cfg(tmp_path / "pi-ft-checkpoints")


def _stamp(**settings) -> dict:
    stamp = {"settings": {"steps": 6, "lr": 0.001, "schedule": "constant", **settings}, "inputs": {"extend": "x"},
             "versions": {"torch": "2"}}
    return {**stamp, "fingerprint": stamps.digest(stamp)}


def _checkpoint(folder: Path, step: int) -> None:
    (folder / f"step-{step:08d}").mkdir(parents=True)
    (folder / f"step-{step:08d}" / "COMPLETE").write_text("")


def test_a_fine_tune_resumes_only_what_more_steps_continue_exactly(tmp_path):
    stage = _Stage(tmp_path)
    assert stamps.status(stage, _stamp()) == stamps.Status("to run")
    _checkpoint(stage.config.checkpoint_dir, 6)
    assert stamps.status(stage, _stamp()).line() == \
        f"{stage.config.checkpoint_dir} has no stage.json (an earlier posinterp made its checkpoints), rerunning"
    stamps.write(stage.output, _stamp())
    stamps.write(stage.config.checkpoint_dir, _stamp())
    assert stamps.status(stage, _stamp()).kind == "done"
    assert stamps.status(stage, _stamp(steps=8)) == stamps.Status("resume", "steps 6 → 8", 6)
    assert stamps.status(stage, _stamp(steps=8)).line() == "steps 6 → 8, training on from step 6"
    assert stamps.status(stage, _stamp(steps=4)).line() == \
        "steps 6 → 4 (its newest checkpoint, step 6, is past that: starting over), rerunning"
    assert stamps.status(stage, _stamp(steps=8, lr=0.002)).line() == "steps 6 → 8, lr 0.001 → 0.002, rerunning"
    cosine = stamps.status(stage, _stamp(steps=8, schedule="cosine"))
    assert cosine.kind == "rerun" and "schedule constant → cosine" in cosine.why
    stamps.write(stage.config.checkpoint_dir, _stamp(schedule="cosine"))
    stamps.write(stage.output, _stamp(schedule="cosine"))
    assert stamps.status(stage, _stamp(steps=8, schedule="cosine")).line() == \
        "steps 6 → 8 (a cosine schedule depends on the steps: starting over), rerunning"
    # killed before its output: the checkpoints of this very run continue (or just write it, when complete)
    (stage.output / stamps.STAMP).unlink()
    assert stamps.status(stage, _stamp(schedule="cosine")).line() == "continuing the interrupted fine-tune from step 6"
    assert stamps.status(stage, _stamp(schedule="cosine"), force=True).line() == "--force, rerunning"


def test_differences_name_settings_then_inputs_then_versions():
    old = _stamp()
    new = {"settings": {"steps": 6, "lr": 0.002, "schedule": "constant", "seed": 1}, "inputs": {"extend": "y"},
           "versions": {"torch": "3"}}
    assert stamps.differences(old, new) == ["lr 0.001 → 0.002", "seed unset → 1", "extend changed", "torch 2 → 3"]
    assert stamps.Status("rerun", stamps._said(stamps.differences(old, new))).line() == \
        "lr 0.001 → 0.002, seed unset → 1, extend changed and 1 more, rerunning"
