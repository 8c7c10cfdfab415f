"""Document sources: files, globs, jsonl/parquet, datasets folders, built-ins (the mix included)."""

from __future__ import annotations

import gzip
import json
import os
import re

import pytest

from posinterp.data import corpus, files, sources
from posinterp.data.corpus import describe, iter_documents, load_documents
from posinterp.data.files import Document
from posinterp.data.sources import TEST_BOOKS
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


def test_datasets_folder_without_the_split_is_refused_not_replaced(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"test": Dataset.from_dict({"text": ["held out"]}),
                 "validation": Dataset.from_dict({"text": ["dev"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(PosinterpError, match=r"no 'train' split \(splits: test, validation\).*--split test.*--split all"):
        load_documents(str(tmp_path / "dd"), split="train")
    assert [d.text for d in load_documents(str(tmp_path / "dd"), split="test")] == ["held out"]
    assert sorted(d.text for d in load_documents(str(tmp_path / "dd"), split="all")) == ["dev", "held out"]
    (tmp_path / "dd" / "dataset_dict.json").write_text("{not json")  # what an interrupted copy leaves
    with pytest.raises(PosinterpError, match="dd: not a readable datasets folder.*save_to_disk"):
        load_documents(str(tmp_path / "dd"), split="test")


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.txt").write_text("   ")
    with pytest.raises(PosinterpError, match="no non-empty documents"):
        load_documents(str(tmp_path / "e.txt"))
    with pytest.raises(PosinterpError, match="matches no file"):
        load_documents(str(tmp_path / "nothing*.txt"))
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(PosinterpError, match="holds no file of a readable type"):
        load_documents(str(tmp_path / "pics"))


def test_source_files_are_read_as_text(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    (tmp_path / "notes.rst").write_text("Title\n=====\n")
    (tmp_path / "x.dat").write_text("raw words\r\nsecond line")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config.cfg").write_text("hidden")
    with gzip.open(tmp_path / "z.md.gz", "wt") as fh:
        fh.write("compressed markdown")
    assert load_documents(str(tmp_path / "m.py"))[0].text == "def f():\n    return 1\n"
    assert load_documents(str(tmp_path / "x.dat"))[0].text == "raw words\nsecond line"
    names = [os.path.basename(d.name) for d in load_documents(str(tmp_path))]
    assert names == ["m.py", "notes.rst", "x.dat", "z.md.gz"]  # no .png, nothing hidden
    assert load_documents(str(tmp_path / "z.md.gz"))[0].text == "compressed markdown"


def test_unreadable_files_are_refused_in_one_line_naming_them(tmp_path, monkeypatch):
    bad = {"bin.dat": b"ab\x00\x00cd", "latin.txt": "caf\xe9".encode("latin-1"), "fake.jsonl.gz": b"not gzip",
           "broken.parquet": b"PAR1 this is not parquet", "lines.jsonl": b'{"text": "ok"}\n{"text": oops}\n',
           "strings.json": b'["a", "b"]'}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    expected = {"bin.dat": "binary data", "latin.txt": "not UTF-8 text .*byte 0xe9", "fake.jsonl.gz": "not a valid gzip",
                "broken.parquet": "not a readable parquet file", "lines.jsonl": r"lines.jsonl:2: not valid JSON",
                "strings.json": "a record is a str"}
    for name, pattern in expected.items():
        with pytest.raises(PosinterpError, match=pattern) as err:
            load_documents(str(tmp_path / name))
        assert name in str(err.value) and "\n" not in str(err.value)
    for name in ("bin.dat", "latin.txt", "fake.jsonl.gz", "broken.parquet"):  # also refused before any work
        with pytest.raises(PosinterpError, match=name):
            corpus.check(str(tmp_path / name))

    locked = tmp_path / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads any file: make the open fail as it would for a user
        def denied(path, *a, **k):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(files, "open", denied, raising=False)
    with pytest.raises(PosinterpError, match="locked.txt: permission denied; make it readable"):
        load_documents(str(locked))


# -- the mix --------------------------------------------------------------------------------------
@pytest.fixture
def small_mix(tmp_path, monkeypatch):
    """A mix over a fake stdlib (tmp folder) and fake books; the real pydoc topics."""
    root = tmp_path / "lib"
    for i in range(300):
        path = root / f"pkg{i % 7}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\nVALUE = {i}\n")
    (root / "pkg0" / "copy_of_mod1.py").write_text("# module 1\nVALUE = 1\n")  # exact duplicate
    (root / "pkg0" / "broken.py").write_bytes(b"x = '\xff\xfe'\n")  # not UTF-8, no coding line
    (root / "site-packages" / "thirdparty").mkdir(parents=True)
    (root / "site-packages" / "thirdparty" / "x.py").write_text("not the stdlib")
    monkeypatch.setattr(sources, "stdlib_root", lambda: root)
    books = {"hamlet": "To be", "macbeth": "Out, damned spot", "kinglear": "Nothing will come of nothing",
             "sonnets": "Shall I compare thee", "sonnets_again": "Shall I compare thee"}

    def fake_gutenberg(split="test"):
        for stem in sorted(books):
            if sources.split_has(split, stem in TEST_BOOKS):
                yield Document(f"gutenberg/{stem}", books[stem])

    monkeypatch.setattr(sources, "gutenberg", fake_gutenberg)
    return root


def test_mix_split_is_deterministic_disjoint_and_deduplicated(small_mix):
    train = load_documents("mix", split="train")
    test = load_documents("mix", split="test")
    every = load_documents("mix", split="all")
    assert [d.name for d in load_documents("mix", split="train")] == [d.name for d in train]
    assert not {d.name for d in train} & {d.name for d in test}
    assert not {d.text for d in train} & {d.text for d in test}
    assert sorted(d.name for d in every) == sorted(d.name for d in train + test)
    texts = [d.text.strip() for d in every]
    assert len(texts) == len(set(texts))  # exact duplicates removed
    assert sum(d.name in ("stdlib/pkg1/mod1.py", "stdlib/pkg0/copy_of_mod1.py") for d in every) == 1
    assert sum(d.name.startswith("gutenberg/sonnets") for d in every) == 1
    names = {d.name for d in every}
    assert "stdlib/pkg0/broken.py" not in names and not any("site-packages" in n for n in names)
    assert {"gutenberg/hamlet", "gutenberg/macbeth"} <= {d.name for d in test}
    assert not any(d.name.startswith("gutenberg/") and d.name.split("/")[1] in TEST_BOOKS for d in train)
    code_test = [d for d in test if d.name.startswith("stdlib/")]
    assert 1 <= len(code_test) <= 20  # about 2% of 300 files, by a fixed hash of the path
    assert {d.name.split("/")[0] for d in train} == {"gutenberg", "stdlib", "pydoc"}
    order = [d.name for d in train]
    assert order != sorted(order)  # a fixed shuffle mixes the sources, not one source after another
    assert describe("mix", "train").startswith("mix:train (Pile-like: Gutenberg books")


class WordTokenizer:
    """Stands in for a tokenizer: one token per whitespace-separated word."""

    calls = 0

    def __call__(self, text, **kwargs):
        WordTokenizer.calls += 1
        return {"input_ids": [0] * len(text.split())}

    def get_vocab(self):
        return {"word": 0}


def test_mix_composition_lists_sources_counts_tokens_and_caches(small_mix, tmp_path, monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpus, "CACHE_MIN_CHARS", 0)  # this small mix's counts are cached too
    rows = corpus.composition("mix", "train", WordTokenizer())
    assert list(rows) == ["gutenberg", "stdlib", "pydoc"]
    train = load_documents("mix", split="train")
    for source, row in rows.items():
        docs = [d for d in train if d.name.startswith(source + "/")]
        assert row["documents"] == len(docs) and row["characters"] == sum(len(d.text) for d in docs)
        assert row["tokens"] == sum(len(d.text.split()) for d in docs)
    assert rows["stdlib"]["unreadable"] == 1 and rows["gutenberg"]["duplicates"] == 1
    assert rows["stdlib"]["duplicates"] + corpus.composition("mix", "test")["stdlib"].get("duplicates", 0) == 1
    calls = WordTokenizer.calls
    assert corpus.composition("mix", "train", WordTokenizer()) == rows and WordTokenizer.calls == calls  # cached
    line = corpus.format_composition(rows)
    assert line.startswith("gutenberg 2 documents, 48 characters, 9 tokens (dropped: 1 duplicates); stdlib 2")
    assert line.endswith(f"total {sum(r['documents'] for r in rows.values())} documents, "
                         f"{sum(r['characters'] for r in rows.values()) / 1e6:.2f}M characters, "
                         f"{sum(r['tokens'] for r in rows.values()) / 1e3:.1f}k tokens")


def test_mix_on_the_real_stdlib_never_trains_on_held_out_books():
    names = [d.name for d in iter_documents("mix", split="train")]
    assert not {f"gutenberg/{b}" for b in TEST_BOOKS} & set(names)
    assert sum(n.startswith("stdlib/") for n in names) > 1000 and any(n.startswith("pydoc/") for n in names)
    assert not any(sources._held_out(n) for n in names) and "stdlib/asyncio/tasks.py" in names


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


def test_a_corpus_past_the_memory_bound_is_read_again_to_count_it(small_mix, tmp_path, monkeypatch):
    """Counting holds the texts it read up to COUNT_IN_MEMORY_CHARS; past it, the count re-reads them: same counts."""
    (tmp_path / "notes.txt").write_text("one two three\n\nfour five")
    spec = f"mix,{tmp_path / 'notes.txt'}"
    monkeypatch.setattr(corpus, "CACHE_MIN_CHARS", 0)
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "held"))
    held = corpus.composition(spec, "train", WordTokenizer())
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "read-again"))
    monkeypatch.setattr(corpus, "COUNT_IN_MEMORY_CHARS", 10)
    assert corpus.composition(spec, "train", WordTokenizer()) == held
    assert held[str(tmp_path / "notes.txt")] == {"documents": 1, "characters": 24, "tokens": 5}
    calls = WordTokenizer.calls
    assert corpus.composition(spec, "train", WordTokenizer()) == held and WordTokenizer.calls == calls  # cached


def test_a_small_corpus_count_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.txt").write_text("alpha beta")
    assert corpus.composition(str(tmp_path / "a.txt"), tokenizer=WordTokenizer())[str(tmp_path / "a.txt")]["tokens"] == 2
    assert not (tmp_path / "cache").exists()  # a corpus refused as too short leaves nothing behind


def test_stream_tokens_is_one_epoch_of_packing_and_a_corpus_short_of_a_sequence_is_refused(tmp_path):
    from posinterp.data.packing import PackedSequences
    from posinterp.data.tokens import encoder

    texts = ["one two three", "four five", "six"]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text)
    spec = str(tmp_path / "*.txt")
    rows = corpus.composition(spec, "train", WordTokenizer())
    total = corpus.stream_tokens(rows)
    assert total == 6 + 3  # each document's words plus its EOS
    stream = PackedSequences(lambda: texts, encoder(WordTokenizer()), 1, seq_len=total)
    assert len(stream.take(1)[0]) == total and stream.state()["carry"] == []  # exactly one sequence, nothing over
    corpus.check_fills(rows, spec, "train", total)  # one pass fills one sequence: trains
    with pytest.raises(PosinterpError, match=rf"^--data {re.escape(spec)} holds 9 tokens \(3 documents, EOS included\), fewer "
                                             r"than the 10 one sequence needs \(--seq-len 10\); give more text or a "
                                             r"lower --seq-len$"):
        corpus.check_fills(rows, spec, "train", 10)
    with pytest.raises(PosinterpError, match=r"^--data pydoc --split test holds 4 tokens \(1 document, EOS"):
        corpus.check_fills({"pydoc": {"documents": 1, "characters": 9, "tokens": 3}}, "pydoc", "test", 64)
