"""`eval summarize`: ROUGE wiring against hand values, outputs, seeded decoding, refusals before work."""

from __future__ import annotations

import json

import pytest

from posinterp.errors import PosinterpError
from posinterp.evals.summarize import SummarizeConfig, mean_and_sem, rouge, summarize


def test_rouge_hand_values():
    assert rouge("the cat sat on the mat", "the cat sat on the mat") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("the cat sat on the mat", "quantum chromodynamics") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    # unigram overlap the×2, cat, on, mat = 5 of 6 each side; bigrams: the cat, on the, the mat = 3 of 5;
    # longest common subsequence "the cat on the mat" = 5 of 6
    got = rouge("the cat sat on the mat", "the cat lay on the mat")
    assert got["rouge1"] == pytest.approx(5 / 6) and got["rouge2"] == pytest.approx(3 / 5)
    assert got["rougeL"] == pytest.approx(5 / 6)
    # the Porter stemmer is on (the paper's setting): cats ~ cat, running ~ run
    assert rouge("cat run", "cats running")["rouge1"] == 1.0
    # F-measure, not recall: 2 of 4 generated words match 2 of 2 reference words → P .5, R 1, F 2/3
    assert rouge("red apple", "red apple green pear")["rouge1"] == pytest.approx(2 / 3)


def test_mean_and_standard_error():
    assert mean_and_sem([2.0]) == (2.0, 0.0)
    mean, se = mean_and_sem([1.0, 2.0, 3.0])  # sample std 1, / √3
    assert mean == 2.0 and se == pytest.approx(3 ** -0.5)


def _pairs(tmp_path, n=2):
    rows = [{"report": f"Report {i}. The budget of the agency grew by {i} percent. " * 8,
             "summary": f"The agency budget grew {i} percent."} for i in range(n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_end_to_end_tiny_model_writes_scores_and_generations(tiny_dir, tmp_path):
    model = tiny_dir()
    data = _pairs(tmp_path)
    res = summarize(str(model), data=str(data), max_input_tokens=40, max_new_tokens=6, out=tmp_path / "a")
    out = tmp_path / "a"
    saved = json.loads((out / "results.json").read_text())
    assert saved["mean"] == res["mean"] and len(saved["documents"]) == 2
    assert saved["max_input_tokens"] == 40 and saved["decoding"].startswith("sampling, temperature 0.5, top-p 0.95")
    assert "torch" in saved["versions"] and saved["versions"]["rouge_score"] != "not installed"
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [g["reference"] for g in gens] == ["The agency budget grew 0 percent.", "The agency budget grew 1 percent."]
    for doc, gen in zip(saved["documents"], gens):
        assert doc["prompt_tokens"] == 40 + saved["prompt_overhead_tokens"] and doc["truncated"]
        assert 0 <= doc["new_tokens"] <= 6
        assert doc["rouge1"] == pytest.approx(100 * rouge(gen["reference"], gen["generation"])["rouge1"])
    assert res["mean"]["rouge1"] == pytest.approx(sum(d["rouge1"] for d in saved["documents"]) / 2, abs=1e-3)
    md = (out / "results.md").read_text()
    assert "| ROUGE-1 | ROUGE-2 | ROUGE-L |" in md and "mean ± s.e. (2 docs)" in md

    # sampling is seeded per document: the same seed gives the same text; greedy is selectable
    again = summarize(str(model), data=str(data), max_input_tokens=40, max_new_tokens=6, out=tmp_path / "b")
    assert [d["new_tokens"] for d in again["documents"]] == [d["new_tokens"] for d in res["documents"]]
    assert (tmp_path / "b" / "generations.jsonl").read_text() == (out / "generations.jsonl").read_text()
    greedy = summarize(str(model), data=str(data), max_input_tokens=40, max_new_tokens=6, greedy=True,
                       out=tmp_path / "c")
    assert greedy["decoding"] == "greedy decoding"


def test_builtin_smoke_set_runs_print_only(tiny_dir, tmp_path, capsys):
    res = summarize(str(tiny_dir()), limit=1, max_new_tokens=4, greedy=True)  # no --out: printed only
    assert "| ROUGE-1 | ROUGE-2 | ROUGE-L |" in capsys.readouterr().out
    assert res["documents"][0]["name"].startswith("pydoc-summaries/") and "SMOKE SET" in res["data"]
    # default input budget fills the window: prompt + document + new tokens + EOS = 256
    assert res["max_input_tokens"] + res["prompt_overhead_tokens"] + 4 + 1 == 256


def test_refusals_before_any_work(tiny_dir, tmp_path):
    model, data = str(tiny_dir()), str(_pairs(tmp_path))
    with pytest.raises(PosinterpError, match="--max-new-tokens 300 is not below the model's window 256"):
        summarize(model, data=data, max_new_tokens=300, out=tmp_path / "o")
    with pytest.raises(PosinterpError, match="--max-input-tokens 500 .* use --max-input-tokens"):
        summarize(model, data=data, max_input_tokens=500, max_new_tokens=16, out=tmp_path / "o")
    with pytest.raises(PosinterpError, match="no field 'article'.*--document-field"):
        summarize(model, data=data, document_field="article", max_new_tokens=16, out=tmp_path / "o")
    with pytest.raises(PosinterpError, match="--temperature 0"):
        SummarizeConfig(model=model, temperature=0)
    with pytest.raises(PosinterpError, match="--device 'tpu'"):
        SummarizeConfig(model=model, device="tpu")
    with pytest.raises(PosinterpError, match="--device cuda:5: torch sees"):
        summarize(model, data=data, device="cuda:5", out=tmp_path / "o")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PosinterpError, match="not empty.*--force"):
        summarize(model, data=data, out=tmp_path / "full")
    assert not (tmp_path / "o").exists()
