"""The report from a run folder of fake results: the computed verdict, the curves during fine-tuning
(plot, table, CSV) and sentences only for rows whose results exist."""

from __future__ import annotations

import json
from pathlib import Path

from posinterp.run.recipe import build
from posinterp.run.report import CURVES_CSV, CURVES_FIGURE, verdict, write_report

WINDOWS = [512, 1024]


def _passkey(acc: dict[int, float], k_max: int) -> dict:
    return {"label": "x", "window": 1024, "success_rate": 0.2, "config": {"trials": 10, "seed": 0},
            "summary": {"k_max": k_max, "per_length": [{"length": n, "accuracy": a, "trials": 10} for n, a in acc.items()]}}


def _ppl(values: list[float]) -> dict:
    return {"label": "x", "window": 1024, "corpus": "fake books", "documents": [{"name": "a"}],
            "config": {"max_tokens": None, "dtype": "bfloat16"},
            "windows": [{"window": w, "perplexity": p, "stride": 256} for w, p in zip(WINDOWS, values)]}


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _fine_tune(run: Path, folder: str, passkey_at_1024: list[float], ppl: list[float]) -> None:
    """posinterp.json of the final checkpoint and metrics.jsonl with train rows and evals at steps 0, 10, 20."""
    _write(run / folder / "posinterp.json", {"training": {"steps": 20, "tokens": 81920}})
    rows = []
    for i, step in enumerate((0, 10, 20)):
        if step:
            rows.append({"step": step, "loss": 3.0 - 0.1 * i, "tokens": step * 4096})
        rows.append({"kind": "eval", "step": step, "tokens": step * 4096,
                     "passkey": {"512": 1.0, "1024": passkey_at_1024[i]}, "ppl": ppl[i], "ppl_window": 512})
    path = run / f"{folder}-checkpoints" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 2')  # a torn last line is skipped


def _run(tmp_path: Path, rows: list[str]) -> tuple[Path, object]:
    run = tmp_path / "run"
    results = {"pi": (_passkey({512: 0.0, 1024: 0.0}, 0), _ppl([80.16, 81.69])),
               "pi_ft": (_passkey({512: 0.0, 1024: 0.0}, 0), _ppl([36.41, 36.17])),
               "nopi_ft": (_passkey({512: 1.0, 1024: 1.0}, 1024), _ppl([33.0, 45.0])),
               "yarn": (_passkey({512: 1.0, 1024: 0.1}, 512), _ppl([33.83, 33.21]))}
    for row in rows:
        _write(run / "eval" / row / "passkey" / "results.json", results[row][0])
        _write(run / "eval" / row / "ppl" / "results.json", results[row][1])
    if "pi_ft" in rows:
        _fine_tune(run, "pi-ft", [0.0, 0.0, 0.0], [80.0, 40.0, 36.5])
    if "nopi_ft" in rows:
        _fine_tune(run, "nopi-ft", [0.0, 1.0, 1.0], [60.0, 50.0, 45.0])
    recipe = build({"name": "fake", "model": "m", "out": str(run), "extend": {"factor": 2},
                    "train": {"steps": 20, "seq_len": 4096},
                    "eval": {"rows": rows, "windows": WINDOWS, "passkey_lengths": WINDOWS}})
    return run, recipe


def test_the_verdict_is_computed_from_the_result_files(tmp_path):
    run, recipe = _run(tmp_path, ["pi", "pi_ft", "nopi_ft", "yarn"])
    summary = write_report(recipe, run, {"train (PI)": 10.0}, factor=2.0)
    report = (run / "report.md").read_text()
    want = [
        "PI, fine-tuned, after 20 steps, 81.9 k tokens, retrieves the passkey at no length tested: "
        "512 (0%), 1024 (0%); k_max 0.",
        "Fine-tuned without PI (same steps, same data), after 20 steps, 81.9 k tokens, retrieves the passkey at "
        "every length tested, up to 1024: 512 (100%), 1024 (100%); k_max 1024.",
        "YaRN, no fine-tuning retrieves the passkey at 512 (100%) but not at 1024 (10%); k_max 512.",
        "At the same budget (20 steps, 81.9 k tokens), PI, fine-tuned retrieves less far than the fine-tune "
        "without PI: passkey k_max 0 against 1024, 0% against 100% at 1024; perplexity at 1024 36.17 against 45.00.",
        "Fine-tuning PI (20 steps, 81.9 k tokens) moved its passkey k_max from 0 to 0 and its perplexity at 1024 "
        "from 81.69 to 36.17.",
        "During fine-tuning, PI, fine-tuned did not retrieve the passkey at 1024 in 3 evaluations (up to 81.9 k "
        "tokens, step 20); its held-out perplexity at 512 went from 80.00 (step 0) to 36.50 (step 20).",
        "During fine-tuning, fine-tuned without PI (same steps, same data) first retrieved the passkey at 1024 "
        "(100%) after 41 k tokens (step 10); its held-out perplexity at 512 went from 60.00 (step 0) to 45.00 "
        "(step 20).",
        "Lowest perplexity at the longest window, 1024: YaRN, no fine-tuning (33.21); highest: PI, 0 fine-tune steps "
        "(81.69), of 4 rows measured there.",
    ]
    for sentence in want:
        assert f"- {sentence}\n" in report, sentence
    assert report.index("## Verdict") < report.index("## Before and after")
    assert summary["pi_ft"] == {"k_max": 0, "ppl": {512: 36.41, 1024: 36.17}, "tokens": 81920}
    assert "# fake: m, PI ×2" in report


def test_curves_are_plotted_and_tabulated(tmp_path):
    run, recipe = _run(tmp_path, ["pi", "pi_ft", "nopi_ft"])
    write_report(recipe, run, {}, factor=2.0)
    png = run / CURVES_FIGURE
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run.glob(".*tmp*"))  # written atomically, no temporary left behind
    report = (run / "report.md").read_text()
    assert f"![Passkey and perplexity during fine-tuning]({CURVES_FIGURE})" in report
    assert "| | step | tokens | passkey @ 512 | passkey @ 1024 | ppl @ 512 |" in report.replace("|  |", "| |")
    assert "| fine-tuned without PI (same steps, same data) | 10 | 40960 | 100% | 100% | 50.00 |" in report
    csv = (run / CURVES_CSV).read_text().splitlines()
    assert csv[0] == "row,step,tokens,passkey_512,passkey_1024,ppl,ppl_window"
    assert "pi_ft,20,81920,1.0,0.0,36.5,512" in csv and len(csv) == 1 + 6
    assert (run / "train_loss.png").is_file()


def test_rows_without_results_get_no_sentence(tmp_path):
    run, recipe = _run(tmp_path, ["pi", "pi_ft"])  # no nopi_ft: nothing is compared with it
    write_report(recipe, run, {}, factor=2.0)
    report = (run / "report.md").read_text()
    assert "without PI" not in report.split("## Before and after")[0]
    assert "Fine-tuning PI (20 steps, 81.9 k tokens) moved its passkey k_max from 0 to 0" in report
    assert verdict({}, {}, {}) == []
    empty = {"pi_ft": {"ppl": None, "passkey": None}, "nopi_ft": {"ppl": None, "passkey": None}}
    assert verdict(empty, {}, {}) == []


# -- the figures show every row, even rows with identical values -------------------------------------


def test_identical_perplexity_rows_are_drawn_apart(tmp_path):
    """The original model and plain extrapolation share their values up to L: each run gets its own marker,
    dash pattern and sideways offset, so neither hides the other (the last drawn used to cover the rest)."""
    from posinterp.evals import plots

    same = {**_ppl([33.0, 32.0]), "corpus": "books"}
    runs = [{**same, "label": "original"}, {**same, "label": "extrapolation"}, {**_ppl([80.0, 81.0]), "label": "pi"}]
    fig = plots.perplexity_by_window(runs, tmp_path / "ppl.png")
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 2]
    assert [list(line.get_ydata()) for line in lines] == [[33.0, 32.0], [33.0, 32.0], [80.0, 81.0]]
    xs = [tuple(line.get_xdata()) for line in lines]
    assert xs[0] != xs[1]  # the two identical runs side by side, not on top of each other
    assert 0.8 * 512 < xs[0][0] < xs[1][0] < xs[2][0] < 1.2 * 512  # by a few percent of the window, in run order
    assert len({line.get_marker() for line in lines}) == 3 and lines[0].get_linestyle() != lines[1].get_linestyle()
    assert plots.dodge(2, 0.1) == [-0.05, 0.05] and plots.dodge(1, 0.1) == [0.0]


def test_passkey_figure_is_a_heat_table_with_one_written_cell_per_row_and_length(tmp_path):
    """Rows at 100% everywhere no longer coincide: each row × length is a cell with its percentage written
    in it; a length a row did not test is a grey "not run" cell."""
    from posinterp.evals import plots

    runs = [{**_passkey({512: 1.0, 1024: 1.0}, 1024), "label": "original"},
            {**_passkey({512: 1.0, 1024: 1.0}, 1024), "label": "extrapolation"},
            {**_passkey({512: 0.0, 1024: 0.3, 2048: 0.0}, 0), "label": "pi"}]
    fig = plots.passkey_accuracy(runs, tmp_path / "pk.png")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (3, 3)  # rows × lengths 512, 1024, 2048
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "100%", (0, 1): "100%", (0, 2): "not run",
                     (1, 0): "100%", (1, 1): "100%", (1, 2): "not run",
                     (2, 0): "0%", (2, 1): "30%", (2, 2): "0%"}
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "original (k_max 1024)", "extrapolation (k_max 1024)", "pi (k_max 0)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["512", "1024", "2048"]
    assert (tmp_path / "pk.png").read_bytes()[:4] == b"\x89PNG"


def test_fine_tunes_with_equal_curves_are_drawn_apart(tmp_path):
    """Two fine-tunes both at 0% during training: their points sit side by side, with different markers."""
    from posinterp.evals import plots

    rows = [{"kind": "eval", "step": s, "tokens": s * 4096, "passkey": {"1024": 0.0}} for s in (0, 10, 20)]
    fig = plots.training_curves({"PI": rows, "no PI": rows}, tmp_path / "curves.png")
    a, b = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 3]  # not the dotted 20% line
    assert list(a.get_ydata()) == list(b.get_ydata()) == [0.0, 0.0, 0.0]
    assert all(x < y for x, y in zip(a.get_xdata(), b.get_xdata())) and a.get_marker() != b.get_marker()
