"""`posinterp run` end to end on a tiny model and a tiny recipe: every stage, the report, skipping, a kill.

A random 2-layer llama (window 128) is extended ×2 by PI, fine-tuned 12 steps at 64 tokens with and
without PI, and evaluated (perplexity at 128 and 256, passkey at 256) in six rows; then the same
recipe is run again (everything skipped), run in a subprocess killed by SIGKILL in the middle of
its train stage and run again (the same final weights, bit for bit), and given invalid values.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from posinterp.__main__ import main
from posinterp.run import run

ROOT = Path(__file__).resolve().parents[2]
ROWS = ["original", "extrapolation", "pi", "pi_ft", "nopi_ft", "yarn"]
STEPS = 12
WORDS = ("the a river stone light north cold window book letter house road garden old quiet long story "
         "under over again before after never always morning evening").split()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer) -> Path:
    """root/model (tiny llama, window 128, SmolLM2's tokenizer) and root/data (4 text files)."""
    from conftest import save_tiny

    root = tmp_path_factory.mktemp("e2e")
    save_tiny(root / "model", smol_tokenizer, window=128)
    rng = random.Random(0)
    (root / "data").mkdir()
    for i in range(4):
        (root / "data" / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(1500)) + "\n")
    return root


def _recipe(root: Path, name: str, rows: list[str] = ROWS, **sections) -> Path:
    data = {
        "name": name, "model": str(root / "model"), "out": str(root / name),
        "extend": {"method": "pi", "factor": 2},
        "train": {"data": str(root / "data"), "seq_len": 64, "steps": STEPS, "save_every": 2, "keep": 2,
                  "lr": 1.0e-3, "warmup": 2, "shuffle_buffer": 4, "tensorboard": False},
        "eval": {"rows": rows, "windows": [128, 256], "passkey_lengths": [256],
                 "ppl": {"data": str(root / "data"), "max_docs": 1, "max_tokens": 320, "stride": [64, 64]},
                 "passkey": {"trials": 1, "max_new_tokens": 4}},
    }
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        data[section][key] = value
    path = root / f"{name}.yaml"
    path.write_text(f"# posinterp run {path}\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def _stage_lines(caplog) -> list[tuple[int, int, str, str]]:
    """(i, n, stage, rest) of each `[i/n] stage: ...` progress line the run logged."""
    found = []
    for rec in caplog.records:
        m = re.match(r"^\[(\d+)/(\d+)\] (.+?): (.*)$", rec.getMessage())
        if m:
            found.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)))
    return found


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first(inputs) -> Path:
    """The whole recipe, once, in this process."""
    run(_recipe(inputs, "full"))
    return inputs / "full"


def test_every_stage_runs_and_the_report_has_its_table_and_figures(first):
    timings = json.loads((first / "timings.json").read_text())
    trains = [k for k in timings if k.startswith("train")]
    assert len(trains) == 2 and "extend" in timings  # PI and no PI fine-tunes
    for row in ROWS:
        assert (first / "eval" / row / "ppl" / "results.json").is_file(), row
        if row != "original":  # passkey at 256 is beyond the original window 128: no passkey there
            assert (first / "eval" / row / "passkey" / "results.json").is_file(), row
            assert f"passkey {row}" in timings
        assert f"ppl {row}" in timings
    for folder in ("pi-ft", "nopi-ft"):
        training = json.loads((first / folder / "posinterp.json").read_text())["training"]
        assert training["steps"] == STEPS and training["seq_len"] == 64
    report = (first / "report.md").read_text()
    from posinterp.run.recipe import ROW_TITLES

    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0].startswith("|  | passkey k_max") and "ppl @ 128" in table[0] and "ppl @ 256" in table[0]
    for row in ROWS:
        assert any(line.startswith(f"| {ROW_TITLES[row]} |") for line in table), row
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"perplexity.png", "passkey_accuracy.png", "train_loss.png"} <= set(images)
    for name in images:
        assert (first / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_second_run_skips_every_finished_stage(first, inputs, caplog):
    outputs = {name: files for name, files in ((d, _files(first / d)) for d in ("extended", "pi-ft", "nopi-ft",
                                                                               "eval"))}
    timings = (first / "timings.json").read_text()
    with caplog.at_level(logging.INFO, logger="posinterp"):
        run(_recipe(inputs, "full"))
    lines = _stage_lines(caplog)
    n = len(json.loads(timings))
    assert len(lines) == n and all(total == n and rest.startswith("done") for _, total, _, rest in lines), lines
    assert (first / "timings.json").read_text() == timings
    assert {d: _files(first / d) for d in outputs} == outputs  # nothing rewritten
    assert "resuming from" not in caplog.text and "wrote " not in caplog.text


def test_a_run_killed_in_its_train_stage_finishes_on_rerun_with_bit_equal_weights(first, inputs, caplog):
    recipe = _recipe(inputs, "killed", rows=["pi_ft"])
    killed = inputs / "killed"
    ckpts = killed / "pi-ft-checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "posinterp", "run", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and not list(ckpts.glob("step-*/COMPLETE")):
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    from posinterp.train import checkpoint

    saved = checkpoint.latest(ckpts)
    assert saved is not None and checkpoint.read_state(saved)["step"] < STEPS
    print(f"killed with {saved.name} the newest complete checkpoint")
    assert not (killed / "pi-ft").exists() and (killed / "extended").is_dir()
    with caplog.at_level(logging.INFO, logger="posinterp"):
        run(recipe)
    lines = {stage: rest for _, _, stage, rest in _stage_lines(caplog)}
    assert lines["extend"].startswith("done") and not lines["train (PI)"].startswith("done"), lines
    assert "resuming from" in caplog.text
    a, b = _weights(killed / "pi-ft"), _weights(first / "pi-ft")
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, unequal
    losses = [[json.loads(line)["loss"] for line in (d / "pi-ft-checkpoints" / "metrics.jsonl").read_text().splitlines()]
              for d in (killed, first)]
    assert losses[0] == losses[1]


@pytest.mark.parametrize("key, value", [("extend__factor", -1), ("train__lr", -1)])
def test_a_recipe_with_an_invalid_value_is_refused_before_anything_is_written(inputs, key, value, capsys):
    name = f"bad-{key.split('__')[1]}"
    recipe = _recipe(inputs, name, **{key: value})
    capsys.readouterr()
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posinterp: error: ") and "\n" not in err, err
    assert key.replace("__", ".") in err or key.split("__")[1] in err, err
    assert not (inputs / name).exists()


def test_estimates_are_priced_before_the_run_and_reported_beside_the_measured_times(inputs):
    out = inputs / "priced"
    run(_recipe(inputs, "priced", rows=["pi", "pi_ft"]), estimate=True)
    saved = json.loads((out / "estimates.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    assert set(saved["stages"]) == set(timings) and all(v > 0 for v in saved["stages"].values())
    assert saved["speed"]["optimizer_s"] > 0 and saved["speed"]["train"] and saved["trimmed"] == [] and saved["budget_s"] is None
    report = (out / "report.md").read_text()
    assert "| stage | estimated s | measured s | measured / estimated |" in report


def test_a_recipe_whose_out_is_a_file_is_refused_in_one_line(inputs, capsys):
    recipe = _recipe(inputs, "afile")
    (inputs / "afile").write_text("not a folder")
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posinterp: error: ") and "\n" not in err and "is a file" in err, err
    assert (inputs / "afile").read_text() == "not a folder"


def test_dry_run_prices_from_this_machines_cached_probe(inputs, capsys):
    """After a probe of this model here (--estimate), a plain --dry-run prices from it and says when it was taken."""
    recipe = _recipe(inputs, "dry", rows=["pi", "pi_ft"])
    run(recipe, dry_run=True, estimate=True)
    capsys.readouterr()
    plan = run(recipe, dry_run=True)
    out = capsys.readouterr().out
    assert "from this machine's measured speed" in out and "the probe cached here on" in out, out
    assert plan["time"]["source"].startswith("this machine") and plan["time"]["seconds_per_step"] > 0
    assert not (inputs / "dry").exists()


def test_a_budget_trims_what_it_says_and_never_refuses_to_run(inputs, caplog):
    from posinterp.errors import PosinterpError
    from posinterp.run.budget import parse_budget

    assert parse_budget("45m") == 2700 and parse_budget("2h") == 7200 and parse_budget("90") == 90
    with pytest.raises(PosinterpError, match="--budget 'soon'"):
        parse_budget("soon")
    recipe = _recipe(inputs, "tight", rows=["pi", "pi_ft"], eval__passkey={"trials": 3, "max_new_tokens": 4})
    # nothing fits in 1 s: the smallest plan is planned anyway, and one line says how long it takes
    with caplog.at_level("WARNING", logger="posinterp.run"):
        planned = run(recipe, budget="1s", dry_run=True)
    assert planned and not (inputs / "tight").exists()
    over = [r.getMessage() for r in caplog.records if "nothing left to trim" in r.getMessage()]
    assert len(over) == 1 and "\n" not in over[0] and "the smallest plan is estimated at" in over[0], over
    from posinterp.run.budget import fit_budget, stage_estimates
    from posinterp.run.estimate import measure_speed
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan, scale

    r, _ = load_recipe(recipe)
    sc = scale(r)
    speed = measure_speed(r.model, precision="fp32", lengths=(32, 128), train_lengths=(32, 64))
    import dataclasses

    full = sum(stage_estimates(plan(r, inputs / "tight", sc=sc), speed).values())
    one = dataclasses.replace(r, eval=dataclasses.replace(r.eval, passkey=dataclasses.replace(r.eval.passkey,
                                                                                              trials=1)))
    fewer = sum(stage_estimates(plan(one, inputs / "tight", sc=sc), speed).values())
    budget = (full + fewer) / 2  # one trial per length fits, three do not
    trimmed, _, est, trims = fit_budget(r, inputs / "tight", False, sc, speed, budget)
    assert trims == ["passkey trials 3 → 1 per length"] and trimmed.eval.passkey.trials == 1
    assert sum(est.values()) == pytest.approx(fewer) and fewer <= budget < full
    assert not (inputs / "tight").exists()
    # the boundary that refused `make demo`: an estimate equal to the budget fits as it is
    same, _, est, trims = fit_budget(r, inputs / "tight", False, sc, speed, full)
    assert trims == [] and same == r and sum(est.values()) == pytest.approx(full)
    # a budget between two step counts trims the steps until the estimate fits, never over it
    steps = dataclasses.replace(one, train=dataclasses.replace(one.train, steps=40), eval=dataclasses.replace(
        one.eval, ppl=dataclasses.replace(one.eval.ppl, max_tokens=256)))  # no perplexity text left to trim
    at = {n: sum(stage_estimates(plan(dataclasses.replace(steps, train=dataclasses.replace(steps.train, steps=n)),
                                      inputs / "tight", sc=sc), speed).values()) for n in (39, 40)}
    fitted, _, est, trims = fit_budget(steps, inputs / "tight", False, sc, speed, (at[39] + at[40]) / 2)
    assert fitted.train.steps == 39 and sum(est.values()) <= (at[39] + at[40]) / 2, trims
    assert trims == ["fine-tune steps 40 → 39 (every fine-tuned row, the same)"]


def test_equal_budget_rows_with_eval_every_put_curves_in_the_report(inputs):
    """pi_ft, yarn_ft and nopi_ft fine-tuned the same way, evaluated along the way: curves in the report."""
    out = inputs / "curves"
    run(_recipe(inputs, "curves", rows=["pi_ft", "yarn_ft", "nopi_ft"], train__steps=4, train__eval_every=2,
                train__eval_lengths="128", train__eval_trials=1, train__eval_ppl_data=str(inputs / "data"),
                train__eval_ppl_tokens=256))
    report = (out / "report.md").read_text()
    assert "## During fine-tuning" in report and (out / "training_curves.png").is_file()
    rows = list(csv.DictReader((out / "training_curves.csv").open()))
    assert {r["row"] for r in rows} == {"pi_ft", "yarn_ft", "nopi_ft"}
    assert sorted({int(r["step"]) for r in rows}) == [0, 2, 4]
