"""Document sources: files, globs, jsonl/parquet, datasets folders, built-ins."""

from __future__ import annotations

import json

import pytest

from posinterp.corpus import TEST_BOOKS, describe, iter_documents, load_documents
from posinterp.errors import PosinterpError


def test_text_files_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    assert [d.text for d in load_documents(str(tmp_path / "*.txt"))] == ["alpha", "beta"]
    assert [d.text for d in load_documents(str(tmp_path))] == ["alpha", "beta"]


def test_jsonl_parquet_and_field_errors(tmp_path):
    rows = [{"report": "one doc", "summary": "s"}, {"report": "two doc", "summary": "t"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert [d.text for d in load_documents(str(tmp_path / "d.jsonl"), text_field="report")] == ["one doc", "two doc"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert len(load_documents(str(tmp_path / "d.parquet"), text_field="report")) == 2
    with pytest.raises(PosinterpError, match="no field 'text'.*--text-field"):
        load_documents(str(tmp_path / "d.jsonl"))


def test_saved_datasets_folder(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"text": ["x y z", "w"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in load_documents(str(tmp_path / "ds"))] == ["x y z", "w"]


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.txt").write_text("   ")
    with pytest.raises(PosinterpError, match="no non-empty documents"):
        load_documents(str(tmp_path / "e.txt"))
    with pytest.raises(PosinterpError, match="matches no file"):
        load_documents(str(tmp_path / "nothing*.txt"))


def test_gutenberg_split_is_fixed_and_disjoint():
    test = [d.name for d in iter_documents("gutenberg", split="test")]
    train = [d.name for d in iter_documents("gutenberg", split="train")]
    assert sorted(n.split("/")[1] for n in test) == sorted(TEST_BOOKS)
    assert len(train) >= 30 and not set(test) & set(train)
    assert "gutenberg:test" in describe("gutenberg")


def test_pydoc_fallback_is_long_and_split():
    test = load_documents("pydoc", split="test")
    train = load_documents("pydoc", split="train")
    assert test and train and all(len(d.text) > 50_000 for d in train)
    assert not {d.name for d in test} & {d.name for d in train}
