"""Summarization SFT data: the paper's prompt, truncation in tokens, loss only on the summary."""

from __future__ import annotations

import json

import pytest
import torch

from posinterp.data import sft, summaries
from posinterp.errors import PosinterpError

DOC = "The committee met on Tuesday. " * 40
SUMMARY = "The committee met."


def test_prompt_is_the_papers_words(smol_tokenizer):
    assert summaries.PROMPT == ("Read the following article and then summarize it.\n\n{document}\n\n"
                          "Now summarize the above article.\nSummary:")
    ids = sft.prompt_only(smol_tokenizer, "A short article.", 100)
    assert smol_tokenizer.decode(ids) == summaries.PROMPT.format(document="A short article.")
    assert len(ids) == sft.prompt_overhead(smol_tokenizer) + len(smol_tokenizer("A short article.")["input_ids"])


def test_labels_are_ignored_exactly_on_the_prompt(smol_tokenizer):
    ids, labels = sft.build_example(smol_tokenizer, DOC, SUMMARY, max_input_tokens=50, max_summary_tokens=20)
    prompt = sft.prompt_only(smol_tokenizer, DOC, 50)
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [sft.IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):]
    assert sft.IGNORE_INDEX not in labels[len(prompt):]
    assert ids[-1] == smol_tokenizer.eos_token_id
    assert smol_tokenizer.decode(ids[len(prompt):-1]) == " " + SUMMARY


def test_truncation_counts_tokens_not_characters(smol_tokenizer):
    doc_ids = smol_tokenizer(DOC, add_special_tokens=False)["input_ids"]
    assert len(doc_ids) > 100
    ids = sft.prompt_only(smol_tokenizer, DOC, 37)
    assert len(ids) == sft.prompt_overhead(smol_tokenizer) + 37
    assert smol_tokenizer.decode(ids) == summaries.PROMPT.format(document=smol_tokenizer.decode(doc_ids[:37]))
    long_summary = "word " * 100
    ids, labels = sft.build_example(smol_tokenizer, DOC, long_summary, max_input_tokens=37, max_summary_tokens=9)
    assert sum(1 for x in labels if x != sft.IGNORE_INDEX) == 9 + 1  # the capped summary + EOS


def test_loss_counts_only_summary_tokens(smol_tokenizer):
    """transformers' own loss with these labels equals cross-entropy over the summary positions alone."""
    from conftest import make_tiny

    model = make_tiny(window=512)
    ids, labels = sft.build_example(smol_tokenizer, DOC, SUMMARY, max_input_tokens=60, max_summary_tokens=20)
    x, y = torch.tensor([ids]), torch.tensor([labels])
    with torch.no_grad():
        out = model(input_ids=x, labels=y)
    start = len(sft.prompt_only(smol_tokenizer, DOC, 60))
    logits = out.logits[0, start - 1:-1].float()  # positions that predict the summary tokens
    expected = torch.nn.functional.cross_entropy(logits, x[0, start:])
    torch.testing.assert_close(out.loss, expected)


def test_budget_fills_window_and_refuses_what_cannot_fit(smol_tokenizer):
    b = sft.fit_budget(smol_tokenizer, 1024, max_summary_tokens=100)
    assert b.overhead + b.max_input_tokens + b.max_summary_tokens + 1 == 1024
    with pytest.raises(PosinterpError, match=r"--max-summary-tokens 2048 is not below the model's window 1024"):
        sft.fit_budget(smol_tokenizer, 1024, max_summary_tokens=2048)
    with pytest.raises(PosinterpError, match=r"--max-input-tokens 1000 .* use --max-input-tokens 902 or less"):
        sft.fit_budget(smol_tokenizer, 1024, max_summary_tokens=100, max_input_tokens=1000)
    with pytest.raises(PosinterpError, match="--max-new-tokens 0 must be at least 1"):
        sft.fit_budget(smol_tokenizer, 1024, max_summary_tokens=0, summary_flag="--max-new-tokens")


def test_pairs_from_jsonl_parquet_datasets_and_field_names(tmp_path):
    rows = [{"report": "first report", "summary": "one"}, {"report": "second report", "summary": "two"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pairs = summaries.load_pairs(str(tmp_path / "d.jsonl"))
    assert [(p.document, p.summary) for p in pairs] == [("first report", "one"), ("second report", "two")]
    import pyarrow as pa
    import pyarrow.parquet as pq

    renamed = [{"article": r["report"], "abstract": r["summary"]} for r in rows]
    pq.write_table(pa.Table.from_pylist(renamed), tmp_path / "d.parquet")
    pairs = summaries.load_pairs(str(tmp_path / "d.parquet"), document_field="article", summary_field="abstract")
    assert [p.summary for p in pairs] == ["one", "two"]
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "ds"))
    assert len(summaries.load_pairs(str(tmp_path / "ds"), split="test")) == 1
    assert len(summaries.load_pairs(str(tmp_path / "ds"), split="train")) == 2


def test_split_named_files_in_a_folder(tmp_path):
    folder = tmp_path / "govreport"
    folder.mkdir()
    for split, n in (("train", 3), ("validation", 2), ("test", 1)):
        rows = [{"report": f"{split} report {i}", "summary": "s"} for i in range(n)]
        (folder / f"{split}-00000-of-00001.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert [len(summaries.load_pairs(str(folder), split=s)) for s in ("train", "validation", "test", "all")] == [3, 2, 1, 6]


def test_errors_name_the_field_and_flag(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "doc", "summary": "s"}))
    with pytest.raises(PosinterpError, match="no field 'report'.*set --document-field"):
        summaries.load_pairs(str(tmp_path / "d.jsonl"))
    (tmp_path / "e.jsonl").write_text(json.dumps({"report": "  ", "summary": "s"}))
    with pytest.raises(PosinterpError, match=r"e.jsonl:0: the document \(field 'report'\) is empty"):
        summaries.load_pairs(str(tmp_path / "e.jsonl"))
    (tmp_path / "f.jsonl").write_text(json.dumps({"report": "doc", "summary": ""}))
    with pytest.raises(PosinterpError, match="the summary .* is empty"):
        summaries.load_pairs(str(tmp_path / "f.jsonl"))
    with pytest.raises(PosinterpError, match="matches no .jsonl"):
        summaries.load_pairs(str(tmp_path / "missing*.jsonl"))


def test_smoke_set_is_deterministic_split_and_the_lead_is_not_in_the_document():
    train, test = summaries.load_pairs("pydoc-summaries", split="train"), summaries.load_pairs("pydoc-summaries", split="test")
    assert train == summaries.load_pairs("pydoc-summaries", split="train")
    assert len(train) >= 8 and len(test) >= 4
    assert not {p.name for p in train} & {p.name for p in test}
    assert len(summaries.load_pairs("pydoc-summaries", split="all")) == len(train) + len(test)
    for p in train + test:
        assert len(p.summary.split()) >= summaries.PYDOC_MIN_SUMMARY_WORDS
        assert len(p.document) >= summaries.PYDOC_MIN_BODY_CHARS
        first = " ".join(p.summary.split()[:8])
        assert first not in " ".join(p.document.split())
    assert max(len(p.document) for p in test) > 30_000  # long documents, not snippets
    assert "SMOKE SET" in summaries.describe_pairs("pydoc-summaries", "test")


def test_split_topic_on_a_hand_example():
    text = ("Title here\n**********\n\nNew in version 3.5.\n\nThe lead sentence says what this is about in words.\n\n"
            "   code_block ::= x\n\nMore text of the body.")
    title, lead, body = summaries.split_topic(text)
    assert title == "Title here" and lead == "The lead sentence says what this is about in words."
    assert body == "Title here\n**********\n\nNew in version 3.5.\n\n   code_block ::= x\n\nMore text of the body."
    assert summaries.split_topic("No underline\n\nbody") is None


def test_iter_examples_is_padding_free_deterministic_and_resumable(smol_tokenizer):
    pairs = [summaries.Pair(f"p{i}", f"Document number {i}. " * (i + 2), f"Summary {i}.") for i in range(5)]
    budget = sft.fit_budget(smol_tokenizer, 256, max_summary_tokens=16)
    run = list(sft.iter_examples(smol_tokenizer, pairs, budget=budget, epochs=2, seed=3))
    assert len(run) == 10 and all(ex["input_ids"].shape == ex["labels"].shape for ex in run)
    assert all(ex["input_ids"].shape[0] == 1 and ex["input_ids"].shape[1] <= 256 for ex in run)
    assert len({ex["input_ids"].shape[1] for ex in run}) > 1  # no padding to a common length
    again = [ex["name"] for ex in sft.iter_examples(smol_tokenizer, pairs, budget=budget, epochs=2, seed=3)]
    assert again == [ex["name"] for ex in run]
    assert sorted(again[:5]) == sorted(again[5:]) == [p.name for p in pairs]
    resumed = list(sft.iter_examples(smol_tokenizer, pairs, budget=budget, epochs=2, seed=3, start=7))
    assert [ex["position"] for ex in resumed] == [7, 8, 9]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(resumed, run[7:]))
    assert run[0]["targets"] == int((run[0]["labels"] != sft.IGNORE_INDEX).sum())
    shards = [[ex["position"] for ex in sft.iter_examples(smol_tokenizer, pairs, budget=budget, epochs=2, seed=3,
                                                          rank=r, world=2)] for r in (0, 1)]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]


def test_right_padding_leaves_each_rows_loss_unchanged(smol_tokenizer):
    """Padding after the real tokens is invisible to them (causal) and has no labels."""
    import torch
    from conftest import make_tiny

    from posinterp.train.loss import full_logits_loss

    budget = sft.fit_budget(smol_tokenizer, 256, max_summary_tokens=16)
    pairs = [summaries.Pair("a", DOC, SUMMARY), summaries.Pair("b", DOC[:80], "Short.")]
    examples = sft.SummaryExamples(smol_tokenizer, pairs, budget, seed=0).take(2)
    ids, labels = sft.collate(examples, smol_tokenizer.eos_token_id)
    assert ids.shape == (2, max(len(x) for x, _ in examples))
    model = make_tiny().float().eval()
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        for row, (x, y) in enumerate(examples):
            alone = model.model(input_ids=torch.tensor([x])).last_hidden_state
            padded = full_logits_loss(hidden[row:row + 1], model.lm_head.weight, ids[row:row + 1], labels[row:row + 1])
            single = full_logits_loss(alone, model.lm_head.weight, torch.tensor([x]), torch.tensor([y]))
            assert padded.item() == pytest.approx(single.item(), rel=1e-5)


def test_summary_stream_matches_iter_examples_and_resumes(smol_tokenizer):
    budget = sft.fit_budget(smol_tokenizer, 256, max_summary_tokens=16)
    pairs = [summaries.Pair(str(i), f"{DOC} {i}", f"{SUMMARY} {i}") for i in range(3)]
    stream = sft.SummaryExamples(smol_tokenizer, pairs, budget, seed=5)
    got = stream.take(7)
    want = [(e["input_ids"][0].tolist(), e["labels"][0].tolist())
            for e in sft.iter_examples(smol_tokenizer, pairs, budget=budget, epochs=3, seed=5)][:7]
    assert got == want and stream.epoch == 2
    again = sft.SummaryExamples(smol_tokenizer, pairs, budget, seed=5, state={"position": 4, "seed": 5, "pairs": 3})
    assert again.take(3) == got[4:]
    with pytest.raises(PosinterpError, match="seed"):
        sft.SummaryExamples(smol_tokenizer, pairs, budget, seed=6, state=stream.state())
