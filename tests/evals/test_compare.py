"""`eval compare`: result folders (globs, lists) merged into one table per kind and one set of plots; RULER runs
beside passkey k_max, per model."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny

from posinterp.errors import PosinterpError
from posinterp.evals import compare as cmp
from posinterp.evals import passkey as pk
from posinterp.evals import perplexity as pp
from posinterp.evals import ruler as ru


@pytest.fixture(scope="module")
def results(tmp_path_factory, smol_tokenizer):
    """Four real runs on a tiny model: passkey as is, passkey with yarn:2, perplexity with pi:2, RULER's fwe as is."""
    tmp_path = tmp_path_factory.mktemp("compare")
    folder = tmp_path / "tiny-llama"
    make_tiny(window=512).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"w{i % 31}" for i in range(900)))
    root = tmp_path / "results"
    pk.passkey(str(folder), lengths="200,400", trials=2, out=root / "pk")
    pk.passkey(str(folder), lengths="200,1024", trials=1, rope="yarn:2", out=root / "pk-yarn")
    pp.perplexity(str(folder), rope="pi:2", data=str(book), windows="128,1024", stride=64, out=root / "ppl")
    ru.ruler(str(folder), tasks="fwe", lengths="256,400", samples=1, max_new_tokens=8, out=root / "ruler")
    return root


def test_compare_merges_runs_into_one_table_and_plots(results, tmp_path):
    out = results / "summary"  # inside the globbed folder on purpose
    summary = cmp.compare(f"{results}/*", out=out)
    labels = [r["label"] for r in summary["runs"]]
    assert labels == ["tiny-llama", "tiny-llama yarn:2", "tiny-llama pi:2", "tiny-llama"]
    text = (out / "summary.md").read_text()
    assert "| tiny-llama yarn:2 | yarn:2 | 1024 |" in text  # run, rope, window
    assert "ppl @ 1024" in text and "| 200 | 400 | 1024 |" in text
    ppl = json.loads((results / "ppl" / "results.json").read_text())["windows"]
    assert summary["runs"][2]["perplexity"] == {str(w["window"]): w["perplexity"] for w in ppl}
    assert (out / "passkey.png").stat().st_size > 0 and (out / "perplexity.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    # the summary folder itself matches the glob on a rerun: it is skipped, not read
    again = cmp.compare(f"{results}/*", out=out, force=True)
    assert len(again["runs"]) == 4
    (out / "summary.md").unlink()
    for name in ("summary.json", "passkey.png", "perplexity.png"):
        (out / name).unlink()
    out.rmdir()


def test_compare_takes_comma_or_space_separated_lists_and_the_cli(results, tmp_path, capsys):
    from posinterp.__main__ import main

    one = cmp.compare(f"{results}/pk,{results}/ppl", out=tmp_path / "a")
    two = cmp.compare([f"{results}/pk {results / 'ppl' / 'results.json'}"], out=tmp_path / "b")
    assert [r["source"] for r in one["runs"]] == [r["source"] for r in two["runs"]]
    assert main(["eval", "compare", f"{results}/pk*", "--out", str(tmp_path / "c")]) == 0
    assert "tiny-llama yarn:2" in (tmp_path / "c" / "summary.md").read_text()
    capsys.readouterr()
    assert main(["eval", "compare", f"{results}/pk*", "--out", str(tmp_path / "c")]) == 2
    assert "--force" in capsys.readouterr().err


def test_compare_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text(json.dumps({"kind": "other"}))
    for runs, message in [(str(tmp_path / "nothing*"), "matches nothing"), (str(tmp_path / "empty"), "no results.json"),
                          (str(tmp_path / "bad"), "not a passkey or perplexity result, nor a ruler one"),
                          ("", "give result folders")]:
        with pytest.raises(PosinterpError, match=message) as err:
            cmp.compare(runs, out=tmp_path / "out")
        assert "\n" not in str(err.value)


def test_ruler_results_are_recognised_and_shown_beside_passkey_k_max(results, tmp_path):
    """Per length averages and both effective lengths; per model (model and rope) passkey k_max beside them; the
    relative rule from each run's own --reference, or from compare's --reference."""
    from posinterp.__main__ import main
    from posinterp.evals import ruler_score as rs

    ruler = json.loads((results / "ruler" / "results.json").read_text())
    summary = cmp.compare(f"{results}/pk,{results}/pk-yarn,{results}/ruler", out=tmp_path / "a")
    item = summary["runs"][2]
    assert item["kind"] == "ruler" and item["tasks"] == ["fwe"] and item["average"] == ruler["summary"]["average"]
    absolute = ruler["summary"]["effective_length"]["absolute"]["length"]
    assert item["effective_length"]["absolute"] == absolute and item["effective_length"]["relative"] is None
    text = (tmp_path / "a" / "summary.md").read_text()
    avg = ruler["summary"]["average"]
    assert "| run | rope | window | tasks | samples | avg @ 256 | avg @ 400 | effective (≥ 85.6) | effective " \
           "(relative) |" in text
    assert f"| tiny-llama | none | 512 | fwe | 1 | {avg['256']:.1f} | {avg['400']:.1f} | {absolute} | — |" in text
    k_max = json.loads((results / "pk" / "results.json").read_text())["summary"]["k_max"]
    assert "| model | passkey k_max | RULER effective length (≥ 85.6 / relative) |" in text
    assert f"| tiny-llama | {k_max} | {absolute} / — |" in text  # one row: the same model and rope
    assert "| tiny-llama yarn:2 | " in text.split("## Passkey and RULER per model")[1]  # passkey alone: RULER —
    # against a reference: the run itself here (window 512, both lengths within it)
    assert main(["eval", "compare", f"{results}/ruler", "--reference", str(results / "ruler"),
                 "--out", str(tmp_path / "b")]) == 0
    item = json.loads((tmp_path / "b" / "summary.json").read_text())["runs"][0]
    base = sum(float(a) for a in avg.values()) / 2
    threshold = rs.RELATIVE_SHARE * base
    assert item["effective_length"]["relative_threshold"] == pytest.approx(threshold, abs=0.01)
    want = rs.effective_length({int(n): float(a) for n, a in avg.items()}, threshold)
    assert item["effective_length"]["relative"] == want
    assert f"| {absolute} | {want} (≥ {round(threshold, 2)}) |" in (tmp_path / "b" / "summary.md").read_text()
    # a reference that is not a RULER result is refused in one line, nothing written
    with pytest.raises(PosinterpError, match="not an `eval ruler` result") as err:
        cmp.compare(f"{results}/ruler", reference=results / "pk", out=tmp_path / "c")
    assert "\n" not in str(err.value) and not (tmp_path / "c").exists()
