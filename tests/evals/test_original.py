"""`eval original`: the side-by-side table at the source window, its statistics, refusals before work."""

from __future__ import annotations

import json
import math

import pytest

from posinterp.errors import PosinterpError
from posinterp.evals.original import OriginalConfig, binomial_se, original, paired_se, ppl_difference
from posinterp.model.extend import extend


def test_statistics_hand_values():
    assert binomial_se(0.5, 100) == pytest.approx(0.05)
    assert binomial_se(1.0, 10) == 0.0
    # differences 1, 0, 1, 0 → mean .5, sample std √(1/3), / √4
    assert paired_se([0, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx(math.sqrt(1 / 3) / 2)
    base = [(10 * math.log(2), 10), (10 * math.log(2), 10)]  # perplexity 2
    ext = [(10 * math.log(4), 10), (10 * math.log(4), 10)]  # perplexity 4
    got = ppl_difference(base, ext, resamples=200, seed=0)
    assert got["baseline"] == pytest.approx(2) and got["extended"] == pytest.approx(4)
    assert got["difference"] == pytest.approx(2) and got["se"] == pytest.approx(0, abs=1e-12)
    same = ppl_difference(base, base, resamples=200, seed=0)
    assert same["difference"] == 0 and same["se"] == 0
    with pytest.raises(PosinterpError, match="different tokens"):
        ppl_difference(base, [(1.0, 9), (1.0, 10)], resamples=200, seed=0)


@pytest.fixture
def pair(tiny_dir, tmp_path):
    """A tiny source model (window 256), its PI ×2 extension, and a small corpus of 3 documents."""
    src = tiny_dir(window=256)
    ext = extend(str(src), factor=2, out=tmp_path / "ext")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, word in enumerate(("river", "mountain", "harbour")):
        (corpus / f"d{i}.txt").write_text(f"The {word} was quiet that morning, and the people of the town "
                                          f"walked along it talking about the weather and the harvest. " * 12)
    return src, ext, corpus


def test_side_by_side_table_on_tiny_models(pair, tmp_path):
    src, ext, corpus = pair
    res = original(str(ext), data=str(corpus), passkey_trials=3, bootstrap=200, out=tmp_path / "res")
    assert res["plan"]["baseline"] == str(src) and res["plan"]["baseline_from"] == "posinterp.json source"
    assert res["plan"]["window"] == 256 and res["plan"]["window_from"] == "posinterp.json original_length"
    ppl, pk = res["rows"]
    # the perplexity row is eval ppl's own numbers for each model, at window L, and their difference
    for role in ("baseline", "extended"):
        sub = json.loads((tmp_path / "res" / f"ppl-{role}" / "results.json").read_text())
        assert sub["windows"][0]["window"] == 256 and sub["config"]["max_tokens"] == 256
        assert ppl[role] == pytest.approx(sub["windows"][0]["perplexity"])
    assert ppl["difference"] == pytest.approx(ppl["extended"] - ppl["baseline"])
    assert ppl["difference"] != 0  # PI changes the positions: the two models differ at L
    assert ppl["n"] == 3 and ppl["se"] > 0 and ppl["ci95"][0] <= ppl["difference"] <= ppl["ci95"][1]
    # passkey: same keys and depths for both; binomial standard errors
    assert pk["n"] == 3 and pk["same_keys_and_depths"]
    sub = json.loads((tmp_path / "res" / "passkey-extended" / "results.json").read_text())
    assert sub["lengths"] == [256] and pk["extended"] == sub["summary"]["accuracy"]
    assert pk["se"] == pytest.approx(math.hypot(binomial_se(pk["baseline"], 3), binomial_se(pk["extended"], 3)))
    md = (tmp_path / "res" / "results.md").read_text()
    assert "| check at L = 256 | n | baseline | extended | extended − baseline | s.e. | 95% interval |" in md
    assert "perplexity" in md and "passkey retrieval at length 256" in md
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert saved["rows"][0]["baseline"] == pytest.approx(ppl["baseline"]) and "torch" in saved["versions"]


def test_a_model_against_itself_differs_by_exactly_zero(pair, tmp_path, capsys):
    src, _, corpus = pair
    before = sorted(p.name for p in tmp_path.iterdir())
    res = original(str(src), baseline=str(src), checks="ppl", data=str(corpus), bootstrap=200)  # no --out
    (row,) = res["rows"]
    assert row["difference"] == 0 and row["se"] == 0 and res["plan"]["window_from"] == "the baseline's config"
    assert "| check at L = 256 |" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # printed only, nothing written


def test_refusals_before_any_work(pair, tmp_path, monkeypatch):
    src, ext, corpus = pair
    out = tmp_path / "never"
    with pytest.raises(PosinterpError, match="no posinterp.json naming its source model; give --baseline"):
        original(str(src), out=out)
    with pytest.raises(PosinterpError, match="--window 512 exceeds the window 256 of the baseline"):
        original(str(ext), window=512, out=out)
    with pytest.raises(PosinterpError, match="--checks: unknown check 'rouge'"):
        OriginalConfig(model=str(ext), checks="ppl,rouge")
    with pytest.raises(PosinterpError, match="nothing to run"):
        OriginalConfig(model=str(ext), checks="")
    with pytest.raises(PosinterpError, match="--device 'gpu': choose auto, cpu, cuda or cuda:N"):
        OriginalConfig(model=str(ext), device="gpu")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(PosinterpError, match="--device cuda: torch sees 0 GPU"):
        original(str(ext), device="cuda", out=out)
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # as if lm-eval were not installed
    with pytest.raises(PosinterpError, match=r"--tasks needs lm-evaluation-harness .*pip install 'posinterp\[lm-eval\]'"):
        original(str(ext), tasks="boolq", data_dir=tmp_path, out=out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".never")]


def test_zero_shot_tasks_through_lm_eval(pair, tmp_path):
    pytest.importorskip("lm_eval", reason="the optional extra posinterp[lm-eval] is not installed")
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, ext, _ = pair
    (tmp_path / "data" / "boolq").mkdir(parents=True)
    rows = [{"question": f"is {x} a colour", "passage": f"{x.title()} is a word.", "idx": i, "label": i % 2}
            for i, x in enumerate(("red", "blue", "stone", "green", "table"))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "boolq" / "validation.parquet")
    with pytest.raises(PosinterpError, match=r"--tasks winogrande: no data on this machine; provide .*"
                                             r"winogrande/validation.parquet"):
        original(str(ext), checks="", tasks="boolq,winogrande", data_dir=tmp_path / "data", out=tmp_path / "x")
    res = original(str(ext), checks="", tasks="boolq", data_dir=tmp_path / "data", out=tmp_path / "r")
    (row,) = res["rows"]
    assert row["check"] == "boolq zero-shot acc (validation)" and row["n"] == 5
    assert row["difference"] == pytest.approx(row["extended"] - row["baseline"])
