"""`eval.summarize` in a recipe: a `summarize <row>` stage per row (plain extrapolation aside), each filling its own
window; priced as prefills plus decoded tokens, trimmed by a budget (documents first, then steps), shown by
--dry-run, checked before anything is written, stamped, run end to end with the report's ROUGE tables; an unchanged
rerun does nothing. Also: `eval.nopi_ft_seq_len` (nopi_ft trains within the window), `eval.ppl: null`, and a
summarization fine-tune priced at its examples' own lengths.

A random 2-layer llama (window 256) extended ×2 by PI; the smoke set pydoc-summaries (its test split: 7 topics, all
of them longer than 512 tokens).
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

E2E = ["extend", "train (PI)", "train (no PI)", "summarize original", "summarize pi_ft", "summarize nopi_ft"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer) -> Path:
    """root/model: a tiny llama, window 256."""
    from conftest import save_tiny

    root = tmp_path_factory.mktemp("summarize-run")
    save_tiny(root / "model", smol_tokenizer, window=256)
    return root


def _recipe(root: Path, name: str, rows: tuple = ("original", "pi_ft", "nopi_ft"), **evals) -> Path:
    data = {
        "name": name, "model": str(root / "model"), "out": str(root / name),
        "extend": {"method": "pi", "factor": 2},
        "train": {"task": "summarize", "data": "pydoc-summaries", "seq_len": 384, "max_summary_tokens": 16,
                  "steps": 2, "precision": "fp32", "tensorboard": False},
        "eval": {"rows": list(rows), "nopi_ft_seq_len": 256, "ppl": None, "passkey": None,
                 "summarize": {"data": "pydoc-summaries", "limit": 2, "max_new_tokens": 4, "dtype": "float32"},
                 **evals},
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


def _speed():
    """A stand-in for the probe: prices without timing anything."""
    from posinterp import speed

    return speed.Speed("fp32", {256: 0.01, 512: 0.03}, {256: 0.1, 512: 0.3}, 0.01, 1e-5, {256: 1e-4, 512: 4e-4}, 2)


# -- planned, refused, priced: no stage runs ----------------------------------------------------------------
def test_each_row_but_extrapolation_summarizes_at_its_own_window(inputs):
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan

    rows = ("original", "extrapolation", "pi", "pi_ft", "nopi_ft")
    recipe, _ = load_recipe(_recipe(inputs, "plan", rows))
    stages = {s.name: s for s in plan(recipe, inputs / "plan")}
    assert list(stages) == ["extend", "train (PI)", "train (no PI)", "summarize original", "summarize pi",
                            "summarize pi_ft", "summarize nopi_ft"]  # ppl and passkey null: none of theirs
    windows = {name.removeprefix("summarize "): s.window for name, s in stages.items() if name.startswith("summ")}
    assert windows == {"original": 256, "pi": 512, "pi_ft": 512, "nopi_ft": 256}
    pi_ft = stages["summarize pi_ft"].config
    assert pi_ft.out == inputs / "plan" / "eval" / "pi_ft" / "summarize" and pi_ft.model == str(inputs / "plan" / "pi-ft")
    assert (pi_ft.max_input_tokens, pi_ft.limit, pi_ft.max_new_tokens, pi_ft.rope) == (None, 2, 4, "none")
    assert (pi_ft.temperature, pi_ft.top_p, pi_ft.greedy) == (0.5, 0.95, False)  # the paper's sampling
    assert stages["summarize pi"].config.model == str(inputs / "plan" / "extended")
    assert stages["summarize original"].describe == ("summaries by original model (window L), 2 documents of "
                                                     "pydoc-summaries:test cut to its window 256")
    # no section (or null): no summarize stage; ppl back: its stages as before
    for ppl in ([], ["--eval.ppl", "{stride: 128}", "--eval.windows", "[256]"]):
        recipe, _ = load_recipe(_recipe(inputs, "plan", rows), ["--eval.summarize", "null", *ppl])
        names = [s.name for s in plan(recipe, inputs / "plan")]
        assert not [n for n in names if n.startswith("summarize")]
        assert [n for n in names if n.startswith("ppl")] == ([f"ppl {r}" for r in rows] if ppl else [])
    assert not (inputs / "plan").exists()


def test_nopi_ft_trains_within_the_window_only_when_the_recipe_says_so(inputs):
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan

    recipe, _ = load_recipe(_recipe(inputs, "nopi"))
    stages = {s.name: s for s in plan(recipe, inputs / "nopi")}
    nopi, pi = stages["train (no PI)"], stages["train (PI)"]
    assert (nopi.config.seq_len, nopi.config.allow_beyond_window, nopi.window) == (256, False, 256)
    assert (pi.config.seq_len, pi.config.allow_beyond_window) == (384, False)
    assert "seq_len=256" in nopi.describe and "seq_len=384" in pi.describe
    # without the key: train.seq_len past the window, RoPE unchanged (the paper's direct fine-tuning), as before
    recipe, _ = load_recipe(_recipe(inputs, "nopi"), ["--eval.nopi_ft_seq_len", "null"])
    stages = {s.name: s for s in plan(recipe, inputs / "nopi")}
    nopi = stages["train (no PI)"]
    assert (nopi.config.seq_len, nopi.config.allow_beyond_window, nopi.window) == (384, True, 384)
    assert stages["summarize nopi_ft"].window == 384  # its checkpoint's raised window
    # a length past the window on purpose is direct fine-tuning again
    recipe, _ = load_recipe(_recipe(inputs, "nopi"), ["--eval.nopi_ft_seq_len", "320"])
    nopi = {s.name: s for s in plan(recipe, inputs / "nopi")}["train (no PI)"].config
    assert (nopi.seq_len, nopi.allow_beyond_window) == (320, True)
    assert not (inputs / "nopi").exists()


@pytest.mark.parametrize("override, message", [
    (["--eval.summarize.limt", "2"], r"^unknown key 'eval\.summarize\.limt'; did you mean 'limit'"),
    (["--eval.summarize.limit", "0"], r"^eval\.summarize\.limit 0 must be at least 1"),
    (["--eval.summarize.limit", "two"], r"^eval\.summarize\.limit 'two' must be a whole number"),
    (["--eval.summarize.temperature", "0"], r"^eval\.summarize\.temperature 0(\.0)? must be > 0"),
    (["--eval.summarize.max_input_tokens", "100"], r"^'eval\.summarize\.max_input_tokens' is set by the pipeline"),
    (["--eval.summarize.model", "x"], r"^'eval\.summarize\.model' is set by the pipeline"),
    (["--eval.summarize", "5"], r"^'eval\.summarize' must be a mapping of keys"),
    (["--eval.summarize.data", "/nonexistent/pairs.jsonl"], r"^eval\.summarize\.data '/nonexistent/pairs\.jsonl' matches no"),
    (["--eval.summarize.max_new_tokens", "300"],
     r"^eval\.summarize\.max_new_tokens 300 is not below row original's window 256: .* lower eval\.summarize\."),
    (["--eval.nopi_ft_seq_len", "x"], r"^eval\.nopi_ft_seq_len 'x' must be a token count of at least 2"),
    (["--eval.nopi_ft_seq_len", "1"], r"^eval\.nopi_ft_seq_len 1 must be a token count of at least 2"),
    (["--train.max_summary_tokens", "400"], r"^train\.max_summary_tokens 400 is not below train\.seq_len 384"),
])
def test_a_bad_summarize_key_is_refused_in_one_line_before_anything_is_written(inputs, override, message):
    with pytest.raises(PosinterpError, match=message) as err:
        run(_recipe(inputs, "refused"), overrides=override)
    assert "\n" not in str(err.value)
    assert not (inputs / "refused").exists()


def test_summarize_stages_are_priced_as_prefills_plus_decoded_tokens(inputs, smol_tokenizer):
    from posinterp.data import sft, summaries
    from posinterp.run.budget import stage_estimates
    from posinterp.run.estimate import LOAD_S, train_seconds
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan

    sp = _speed()
    recipe, _ = load_recipe(_recipe(inputs, "priced"))
    est = stage_estimates(plan(recipe, inputs / "priced"), sp)
    assert set(est) == set(E2E)
    pairs = summaries.load_pairs("pydoc-summaries", split="test", limit=2)
    for row, window in (("original", 256), ("pi_ft", 512), ("nopi_ft", 256)):
        room = sft.fit_budget(smol_tokenizer, window, max_summary_tokens=4).max_input_tokens
        prompts = [len(sft.prompt_only(smol_tokenizer, p.document, room)) for p in pairs]  # what eval summarize feeds
        hand = LOAD_S + sum(sp.forward_s(n) + 4 * sp.decode_token_s(n) for n in prompts)
        assert est[f"summarize {row}"] == pytest.approx(hand), row
    # a summarization fine-tune: each step one example of its own length (as train builds it), not seq_len tokens
    train = summaries.load_pairs("pydoc-summaries", split="train")
    for stage, seq_len in (("train (PI)", 384), ("train (no PI)", 256)):
        budget = sft.fit_budget(smol_tokenizer, seq_len, max_summary_tokens=16)
        lengths = [len(sft.build_example(smol_tokenizer, p.document, p.summary, budget.max_input_tokens, 16)[0])
                   for p in train]
        assert max(lengths) <= seq_len
        hand = LOAD_S + 2 * sum(sp.train_step_s(n) for n in lengths) / len(lengths)
        assert est[stage] == pytest.approx(hand), stage
        if min(lengths) < seq_len:
            assert est[stage] < train_seconds(sp, steps=2, seq_len=seq_len)


def test_a_budget_trims_the_documents_before_the_steps(inputs):
    from posinterp.run.budget import fit_budget, stage_estimates, trimmed_values
    from posinterp.run.recipe import load_recipe
    from posinterp.run.stages import plan, scale
    from posinterp.run.summarize_stage import MIN_DOCUMENTS

    sp = _speed()
    # all 19 topics of the smoke set, 20 steps
    recipe, _ = load_recipe(_recipe(inputs, "trim"), ["--eval.summarize.split", "all", "--eval.summarize.limit",
                                                      "null", "--train.steps", "20"])
    sc = scale(recipe)

    def total(r):
        return sum(stage_estimates(plan(r, inputs / "trim", sc=sc), sp).values())

    def with_limit(n):
        return dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, summarize=dataclasses.replace(
            recipe.eval.summarize, limit=n)))

    full, floor = total(recipe), total(with_limit(MIN_DOCUMENTS))
    assert floor < full
    trimmed, _, est, trims = fit_budget(recipe, inputs / "trim", False, sc, sp, (full + floor) / 2)
    limit = trimmed.eval.summarize.limit
    assert MIN_DOCUMENTS < limit < 19 and trimmed.train.steps == 20 and sum(est.values()) <= (full + floor) / 2
    assert trims == [f"summarized documents 19 → {limit} per row (the first {limit} of pydoc-summaries:all)"]
    assert trimmed_values(trimmed)["eval.summarize.limit"] == limit
    # tighter: the documents go to their floor, then the steps
    trimmed, _, est, trims = fit_budget(recipe, inputs / "trim", False, sc, sp, floor - 1)
    assert trimmed.eval.summarize.limit == MIN_DOCUMENTS and trimmed.train.steps < 20
    assert trims[0] == f"summarized documents 19 → {MIN_DOCUMENTS} per row (the first {MIN_DOCUMENTS} of " \
                       "pydoc-summaries:all)" and trims[1].startswith("fine-tune steps 20 → ")
    assert not (inputs / "trim").exists()


def test_dry_run_shows_the_summarize_work_and_the_summarization_data(inputs, capsys):
    plan = run(_recipe(inputs, "dry"), dry_run=True)
    out = capsys.readouterr().out
    assert re.fullmatch(r"2 documents of pydoc-summaries:test per row, each cut to the row's window, ≤ 4 new tokens "
                        r"sampled at temperature 0\.5, top-p 0\.95: [\d,]+ prompt tokens to prefill and at most 24 to "
                        r"decode over 3 rows \(original at 256: 2 of 2 cut; pi_ft at 512: 2 of 2 cut; nopi_ft at 256: "
                        r"2 of 2 cut\)", plan["summarize"]), plan["summarize"]
    assert f"summarize: {plan['summarize']}" in out
    assert re.search(r"^data: pydoc-summaries:train \(SMOKE SET.*\): 12 pairs; an example \(prompt \+ document cut "
                     r"to fit \+ summary ≤ 16 \+ EOS\) averages [\d,]+ tokens at seq_len 384, [\d,]+ tokens at seq_len "
                     r"256$", out, re.M), out
    assert re.search(r"^train: 2 steps × one example of ≤ 384 tokens \(mean [\d,]+; nopi_ft: ≤ 256, mean [\d,]+\)",
                     out, re.M), out
    assert re.search(r"\[to run\] summarize pi_ft +→ .*eval/pi_ft/summarize", out), out
    assert [s["stage"] for s in plan["stages"]] == E2E and not (inputs / "dry").exists()


# -- run: stamped, reported, rerun only as needed -----------------------------------------------------------
@pytest.fixture(scope="module")
def base(inputs) -> tuple[Path, dict]:
    summary = run(_recipe(inputs, "base"))
    return inputs / "base", summary


def test_the_summarize_stages_run_write_their_stamp_and_the_rouge_tables(base):
    folder, summary = base
    for row, window in (("original", 256), ("pi_ft", 512), ("nopi_ft", 256)):
        out = folder / "eval" / row / "summarize"
        stamp = json.loads((out / stamps.STAMP).read_text())
        assert stamp["stage"] == f"summarize {row}" and stamp["settings"]["limit"] == 2
        assert stamp["settings"]["max_input_tokens"] is None and stamp["settings"]["data"] == "pydoc-summaries"
        result = json.loads((out / "results.json").read_text())
        assert result["window"] == window and len(result["documents"]) == 2
        assert set(summary[row]["rouge"]) >= {"rouge1", "rouge2", "rougeL", "rougeL_sem", "documents", "long"}
        assert summary[row]["rouge"]["rouge1"] == result["mean"]["rouge1"] and summary[row]["ppl"] == {}
    training = json.loads((folder / "nopi-ft" / "posinterp.json").read_text())["training"]
    assert training["seq_len"] == 256
    report = (folder / "report.md").read_text()
    assert "## Before and after" not in report and "ppl @" not in report  # eval.ppl and eval.passkey null
    section = report.split("\n## Summarization\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert table[0] == "|  | documents | document cut to (tokens) | ROUGE-1 | ROUGE-2 | ROUGE-L | mean summary tokens |"
    assert re.match(r"^\| original model \(window L\) \| 2 \| \d+ \| [\d.]+ ± [\d.]+ \|", table[2]), table[2]
    assert len(table) == 2 * (2 + 3)  # every document, then the long ones: both tables, three rows each
    assert "### Documents the original window cuts (2 of 2)" in section
    assert "the paper's prompt (\"Read the following article and then summarize it. …\")" in section
    assert "sampling, temperature 0.5, top-p 0.95" in section and "no bootstrap interval" in section
    assert "nopi_ft at seq_len=256" in report


def test_an_unchanged_rerun_does_nothing_and_a_new_limit_reruns_only_the_summaries(base, inputs, caplog):
    folder, _ = base
    recipe = _recipe(inputs, "base")
    files = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.parent.name != "base"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="posinterp"):
        run(recipe)
    lines = _lines(caplog)
    assert set(lines) == set(E2E) and all(said.startswith("done") for said in lines.values()), lines
    assert {p: p.stat().st_mtime_ns for p in files} == files
    plan = run(recipe, overrides=["--eval.summarize.limit", "1"], dry_run=True)
    assert {s["stage"]: s["why"] for s in plan["stages"] if s["status"] != "done"} == {
        f"summarize {row}": "limit 2 → 1, rerunning" for row in ("original", "pi_ft", "nopi_ft")}


def test_the_long_document_table_keeps_the_documents_the_original_window_cuts(tmp_path):
    """Fake results: L = 100, prompt 10, 5 new tokens: a document of more than 84 tokens is cut at L."""
    from posinterp.evals.summarize import mean_and_sem
    from posinterp.run import summarize_report

    def result(window, scores):
        docs = [{"name": f"d{i}", "document_tokens": n, "prompt_tokens": 0, "new_tokens": 5, "rouge1": r,
                 "rouge2": r / 2, "rougeL": r / 3} for i, (n, r) in enumerate(scores)]
        mean = {}
        for k in ("rouge1", "rouge2", "rougeL"):
            mean[k], mean[k + "_sem"] = mean_and_sem([d[k] for d in docs])
        return {"window": window, "rope": {"original_length": 100}, "data": "fake", "decoding": "greedy decoding",
                "prompt": "Read.\n{document}", "max_input_tokens": window - 16, "max_new_tokens": 5,
                "prompt_overhead_tokens": 10, "documents": docs, "mean": mean}

    docs = {"original": (100, [(50, 30.0), (84, 20.0), (85, 10.0), (300, 0.0)]),
            "pi_ft": (200, [(50, 30.0), (84, 20.0), (85, 40.0), (300, 20.0)])}
    for row, (window, scores) in docs.items():
        path = tmp_path / "eval" / row / "summarize" / "results.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result(window, scores)))
    lines, per = summarize_report.section(tmp_path, ["original", "pi_ft", "nopi_ft"])
    assert set(per) == {"original", "pi_ft"} and per["pi_ft"]["documents"] == 4
    long = per["pi_ft"]["long"]
    assert long["documents"] == 2 and long["rouge1"] == pytest.approx(30.0)
    assert long["rouge1_sem"] == pytest.approx(mean_and_sem([40.0, 20.0])[1])
    assert per["original"]["long"]["rouge1"] == pytest.approx(5.0)
    text = "\n".join(lines)
    assert "### Documents the original window cuts (2 of 4)" in text and "more than 84 tokens" in text
    assert "| PI, fine-tuned | 2 | 184 | 30.0 ± 10.0 | 15.0 ± 5.0 | 10.0 ± 3.3 | 5 |" in text
    # without an original row, L comes from the rows' rope records; no results at all: no section
    assert summarize_report.section(tmp_path, ["pi_ft"])[1]["pi_ft"]["long"]["documents"] == 2
    assert summarize_report.section(tmp_path / "none", ["original"]) == ([], {})


def test_a_report_without_perplexity_drops_its_columns(tmp_path):
    from posinterp.run.recipe import build
    from posinterp.run.report import write_report

    run_dir = tmp_path / "run"
    path = run_dir / "eval" / "pi" / "passkey" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"label": "x", "window": 512, "success_rate": 0.2, "config": {"trials": 1, "seed": 0},
                                "summary": {"k_max": 512, "per_length": [{"length": 512, "accuracy": 1.0}]}}))
    recipe = build({"name": "x", "model": "m", "out": str(run_dir), "extend": {"factor": 2},
                    "eval": {"rows": ["pi"], "windows": [512], "ppl": None}})
    summary = write_report(recipe, run_dir, {})
    report = (run_dir / "report.md").read_text()
    assert "|  | passkey k_max | passkey accuracy by length |\n" in report and "ppl @" not in report
    assert summary["pi"] == {"k_max": 512, "ppl": {}}
