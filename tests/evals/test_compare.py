"""`eval compare`: result folders (globs, lists) merged into one table and one set of plots."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny

from posinterp.errors import PosinterpError
from posinterp.evals import compare as cmp
from posinterp.evals import passkey as pk
from posinterp.evals import perplexity as pp


@pytest.fixture(scope="module")
def results(tmp_path_factory, smol_tokenizer):
    """Three real runs on a tiny model: passkey as is, passkey with yarn:2, perplexity with pi:2."""
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
    return root


def test_compare_merges_runs_into_one_table_and_plots(results, tmp_path):
    out = results / "summary"  # inside the globbed folder on purpose
    summary = cmp.compare(f"{results}/*", out=out)
    labels = [r["label"] for r in summary["runs"]]
    assert labels == ["tiny-llama", "tiny-llama yarn:2", "tiny-llama pi:2"]
    text = (out / "summary.md").read_text()
    assert "| tiny-llama yarn:2 | yarn:2 | 1024 |" in text  # run, rope, window
    assert "ppl @ 1024" in text and "| 200 | 400 | 1024 |" in text
    ppl = json.loads((results / "ppl" / "results.json").read_text())["windows"]
    assert summary["runs"][2]["perplexity"] == {str(w["window"]): w["perplexity"] for w in ppl}
    assert (out / "passkey.png").stat().st_size > 0 and (out / "perplexity.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    # the summary folder itself matches the glob on a rerun: it is skipped, not read
    again = cmp.compare(f"{results}/*", out=out, force=True)
    assert len(again["runs"]) == 3
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
                          (str(tmp_path / "bad"), "not a passkey or perplexity"), ("", "give result folders")]:
        with pytest.raises(PosinterpError, match=message) as err:
            cmp.compare(runs, out=tmp_path / "out")
        assert "\n" not in str(err.value)
