"""The built-in summarization set `aclsum`: documents without their abstract, a stable split, the pinned wheel.

Most tests read a tiny stand-in wheel (four S2ORC-shaped papers) named by $POSINTERP_ACLSUM; the last reads
the real pinned wheel when `make setup` has fetched it into the cache, and is skipped otherwise.
"""

from __future__ import annotations

import json
import re
import statistics
import zipfile

import pytest

from posinterp.data import aclsum, summaries
from posinterp.errors import PosinterpError

TEST_IDS = ("2020.acl-main.282", "P01-1040")
"""Held out by the SHA-1 rule (checked below); the other two stand-in papers are train."""
TRAIN_IDS = ("D07-1016", "P93-1015")


def s2orc(pid: str) -> dict:
    """A paper shaped like the wheel's S2ORC parses; its body repeats the abstract three ways, all to be dropped."""
    abstract = f"We study topic {pid} with a new method. It beats every baseline on three benchmarks by a wide margin."
    para = lambda section, num, text: {"section": section, "sec_num": num, "text": text, "cite_spans": []}  # noqa: E731
    return {
        "paper_id": "2020",  # the real parses repeat a year here: the file name is the id
        "title": f"A Paper About {pid}",
        "abstract": abstract,
        "pdf_parse": {
            "abstract": [para("Abstract", None, abstract)],
            "body_text": [
                para("Abstract", None, "A copy of the abstract headed Abstract, as some parses have."),
                para("", None, abstract),  # the abstract itself, unheaded
                para("Introduction", "1", f"Topic {pid} matters because long documents are hard."),
                para("Introduction", "1", "It beats every baseline on three benchmarks by a wide margin."),  # a piece
                para("Introduction", "1", ")"),  # a fragment split off an equation: kept
                para("Method", "2", "We read the whole paper and then write a summary of it."),
                para("Method", "2.1", "Details of the encoder follow here."),
            ],
            "back_matter": [para("Acknowledgments", None, "We thank the reviewers.")],
        },
    }


def make_wheel(path, ids, *, order=None):
    """A zip laid out like the wheel: aclsum/dataset/paper_jsons/<id>.json, plus a file that is not a paper."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("aclsum/__init__.py", "")
        for pid in order or ids:
            z.writestr(f"aclsum/dataset/paper_jsons/{pid}.json", json.dumps(s2orc(pid)))
    return path


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    wheel = make_wheel(tmp_path / "fake.whl", TEST_IDS + TRAIN_IDS)
    monkeypatch.setenv(aclsum.ENV, str(wheel))
    return wheel


def test_split_is_stable_disjoint_and_by_hash(stand_in):
    assert all(aclsum.held_out(p) for p in TEST_IDS) and not any(aclsum.held_out(p) for p in TRAIN_IDS)
    test = [p.id for p in aclsum.papers("test")]
    train = [p.id for p in aclsum.papers("train")]
    assert test == sorted(TEST_IDS) and train == sorted(TRAIN_IDS)
    assert [p.id for p in aclsum.papers("all")] == sorted(TEST_IDS + TRAIN_IDS)
    assert [p.id for p in aclsum.papers("test")] == test  # the same every call
    names = [p.name for p in summaries.load_pairs("aclsum", split="test")]
    assert names == [f"aclsum/{p}" for p in sorted(TEST_IDS)]


def test_split_does_not_depend_on_file_order(tmp_path, monkeypatch, stand_in):
    before = {s: list(aclsum.papers(s)) for s in ("train", "test")}
    shuffled = make_wheel(tmp_path / "shuffled.whl", (), order=("P93-1015", "P01-1040", "D07-1016", "2020.acl-main.282"))
    monkeypatch.setenv(aclsum.ENV, str(shuffled))
    assert {s: list(aclsum.papers(s)) for s in ("train", "test")} == before


def test_an_extracted_folder_reads_like_the_wheel(tmp_path, monkeypatch, stand_in):
    wheel = list(aclsum.papers("all"))
    with zipfile.ZipFile(stand_in) as z:
        z.extractall(tmp_path / "extracted")
    monkeypatch.setenv(aclsum.ENV, str(tmp_path / "extracted"))
    assert list(aclsum.papers("all")) == wheel


def test_document_is_title_and_headed_body_never_the_abstract(stand_in):
    (pair,) = [p for p in summaries.load_pairs("aclsum", split="test") if p.name.endswith("P01-1040")]
    paper = s2orc("P01-1040")
    assert pair.summary == paper["abstract"]
    assert pair.document == (
        "A Paper About P01-1040\n\n"
        "1 Introduction\nTopic P01-1040 matters because long documents are hard.\n\n)\n\n"
        "2 Method\nWe read the whole paper and then write a summary of it.\n\n"
        "2.1 Method\nDetails of the encoder follow here.")
    for sentence in pair.summary.split(". "):
        assert sentence.rstrip(".") not in pair.document
    assert "Abstract" not in pair.document and "reviewers" not in pair.document


def test_pairs_train_and_describe(stand_in):
    assert [p.name for p in summaries.load_pairs("aclsum", split="train", limit=1)] == ["aclsum/D07-1016"]
    assert "stand-in" in summaries.describe_pairs("aclsum", "test")


def test_wired_into_train_and_eval_summarize(stand_in, tiny_dir, smol_tokenizer):
    """`train --task summarize` sees the paper in the prompt and the abstract as the only labels;
    `eval summarize --data aclsum` runs end to end (a tiny random model, a few new tokens)."""
    from posinterp.data import sft
    from posinterp.evals.summarize import summarize

    pairs = summaries.load_pairs("aclsum", split="train")
    budget = sft.fit_budget(smol_tokenizer, 1024, max_summary_tokens=64)
    (ids, labels), = sft.SummaryExamples(smol_tokenizer, pairs, budget, seed=0).take(1)
    answer = [t for t, y in zip(ids, labels, strict=True) if y != sft.IGNORE_INDEX]
    pair = next(p for p in pairs if smol_tokenizer.decode(answer[:-1]) == " " + p.summary)
    assert pair.document in smol_tokenizer.decode(ids)
    res = summarize(str(tiny_dir()), data="aclsum", limit=1, max_new_tokens=4, greedy=True)
    assert res["documents"][0]["name"] == f"aclsum/{sorted(TEST_IDS)[0]}" and res["data"].startswith("aclsum:test")


def refused(call) -> str:
    with pytest.raises(PosinterpError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_validation_split_is_refused(stand_in):
    assert "train and test only" in refused(lambda: summaries.load_pairs("aclsum", split="validation"))
    assert "train and test only" in refused(lambda: summaries.load_pairs("pydoc-summaries", split="validation"))


def test_missing_wheel_names_the_command_that_fetches_it(tmp_path, monkeypatch):
    monkeypatch.delenv(aclsum.ENV, raising=False)
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    message = refused(lambda: summaries.load_pairs("aclsum", split="test"))
    assert "not fetched" in message and "make setup" in message and "fetch()" in message
    assert not (tmp_path / "cache" / "corpora").exists()  # nothing written, nothing downloaded
    monkeypatch.setenv(aclsum.ENV, str(tmp_path / "nowhere.whl"))
    assert "does not exist" in refused(lambda: summaries.load_pairs("aclsum"))


def test_damaged_wheels_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(aclsum.ENV, raising=False)
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    cached = aclsum.cached_wheel()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"PK\x03\x04" + b"\0" * 1000)  # a partial download
    assert "not the pinned 5,152,165" in refused(lambda: summaries.load_pairs("aclsum"))
    cached.write_bytes(b"\0" * aclsum.WHEEL_SIZE)  # the right size, other bytes
    message = refused(lambda: summaries.load_pairs("aclsum"))
    assert "sha256" in message and "delete it and fetch it again" in message
    assert "sha256" in refused(aclsum.fetch)  # fetch checks what it finds rather than trusting it
    wheel = make_wheel(tmp_path / "fake.whl", TEST_IDS).read_bytes()
    (tmp_path / "truncated.whl").write_bytes(wheel[: len(wheel) // 2])
    monkeypatch.setenv(aclsum.ENV, str(tmp_path / "truncated.whl"))
    assert "damaged zip" in refused(lambda: summaries.load_pairs("aclsum"))


def test_a_paper_without_a_body_or_abstract_is_refused(tmp_path, monkeypatch):
    empty = s2orc("P01-1040")
    empty["pdf_parse"]["body_text"] = empty["pdf_parse"]["body_text"][:2]  # only copies of the abstract
    with zipfile.ZipFile(tmp_path / "w.whl", "w") as z:
        z.writestr("aclsum/dataset/paper_jsons/P01-1040.json", json.dumps(empty))
    monkeypatch.setenv(aclsum.ENV, str(tmp_path / "w.whl"))
    assert "no body text" in refused(lambda: summaries.load_pairs("aclsum", split="test"))
    assert "no abstract" in refused(lambda: aclsum.paper("x", {**empty, "abstract": " "}))
    assert "not an S2ORC parse" in refused(lambda: aclsum.paper("x", {"title": "t"}))


@pytest.mark.skipif(not aclsum.cached_wheel().is_file(), reason="the aclsum wheel is not fetched (make setup)")
def test_the_real_wheel(monkeypatch, smol_tokenizer):
    monkeypatch.delenv(aclsum.ENV, raising=False)
    counts = {s: len(summaries.load_pairs("aclsum", split=s)) for s in ("train", "test", "all")}
    assert counts == {"train": aclsum.PAPERS - aclsum.TEST_PAPERS, "test": aclsum.TEST_PAPERS, "all": aclsum.PAPERS}
    assert (counts["train"], counts["test"]) == (198, 52)
    heading = re.compile(r"^\d+(\.\d+)* \S.*$", re.M)  # "1 Introduction", "3.2 Sequence Modeling Layer"
    for pair in summaries.load_pairs("aclsum", split="all"):
        title, blank, _ = pair.document.split("\n", 2)
        assert title.strip() and not blank and pair.summary not in pair.document, pair.name
        assert heading.search(pair.document), pair.name
    test = summaries.load_pairs("aclsum", split="test", limit=8)
    tokens = [len(smol_tokenizer(p.document, add_special_tokens=False)["input_ids"]) for p in test]
    assert all(1500 < n < 30_000 for n in tokens) and 4000 < statistics.median(tokens) < 9000, tokens
