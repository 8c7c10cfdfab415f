"""RULER: every task's prompt at exact token lengths, needles where stated, answers derivable from the prompt,
the scorer, Wilson intervals, both effective-length rules, KV-prefix sharing, refusals, and the CLI end to end."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from conftest import make_tiny

from posinterp.errors import PosinterpError
from posinterp.evals import common
from posinterp.evals import ruler as ru
from posinterp.evals import ruler_score as rs
from posinterp.evals import ruler_tasks as rt
from posinterp.evals.ruler_prompts import Builder

NIAH = [t for t, spec in rt.TASKS.items() if spec.kind == "niah"]


@pytest.fixture(scope="module", params=["plain", "chat"])
def builder(request, smol_tokenizer):
    return Builder(smol_tokenizer, request.param)


def context_text(builder, s) -> str:
    return builder.tokenizer.decode(list(s.ids[s.context_start: s.context_start + s.context_tokens]))


# --- prompts: length, frame, needles ------------------------------------------------------------------


@pytest.mark.parametrize("task", list(rt.TASKS))
@pytest.mark.parametrize("length", [1000, 4096, 6001])
def test_every_prompt_has_exactly_the_asked_length(builder, smol_tokenizer, task, length):
    s = builder.build(task, length, 0, seed=0)
    assert len(s.ids) == s.length == length
    # the frame: the chat template (or nothing) first, RULER's answer prefix last
    ids = list(s.ids)
    assert ids[: len(builder.format.before)] == builder.format.before
    text = smol_tokenizer.decode(ids)
    assert text.rstrip().endswith(("provided text is", "provided text are", "they are:", "list are:", "words are:"))
    # the text, tokenized afresh as another tool would, is within a few tokens
    assert abs(len(smol_tokenizer(text, add_special_tokens=False)["input_ids"]) - length) <= 4
    if task == "cwe":
        assert s.info["pad_tokens"] < s.info["uncommon_repeats"] or s.info["pad_tokens"] == 0


def test_the_chat_frame_is_the_tokenizers_template(smol_tokenizer):
    chat, plain = Builder(smol_tokenizer, "chat"), Builder(smol_tokenizer, "plain")
    assert chat.format.kind == "chat" and plain.format.kind == "plain"
    assert Builder(smol_tokenizer, "auto").format.kind == "chat"  # SmolLM2's tokenizer has one
    s = chat.build("niah_single_1", 800, 0, 0)
    task_text = plain.tokenizer.decode(list(plain.build("niah_single_1", 800, 0, 0).ids))
    ref = smol_tokenizer.apply_chat_template([{"role": "user", "content": "X"}], tokenize=False,
                                             add_generation_prompt=True)
    text = smol_tokenizer.decode(list(s.ids))
    assert text.startswith(ref.split("X")[0]) and ref.split("X")[1] in text
    assert task_text.startswith("A special magic number is hidden within the following text.")


@pytest.mark.parametrize("task", NIAH)
def test_niah_needles_sit_where_stated_and_answer_the_query(builder, smol_tokenizer, task):
    spec = rt.TASKS[task]
    s = builder.build(task, 8192, 3, seed=1)
    ids = list(s.ids)
    assert len(s.needles) == max(spec.keys, spec.queries) * spec.values
    for n in s.needles:
        assert smol_tokenizer.decode(ids[n["position"]: n["position"] + n["tokens"]]).strip() == n["text"]
        assert s.context_start <= n["position"] < s.context_start + s.context_tokens
        if spec.haystack == "book":  # at the sentence boundary nearest to its RULER depth
            assert n["depth"] in rt.DEPTHS and abs(n["token_depth"] - n["depth"] / 100) <= 0.03
    assert [n["position"] for n in s.needles] == sorted(n["position"] for n in s.needles)
    # what the prompt says answers its question: each queried key's values (keys in the order asked)
    text = context_text(builder, s)
    pairs = re.findall(r"One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.", text)
    found: dict[str, list[str]] = {}
    for k, v in pairs:
        found.setdefault(k, []).append(v)
    asked = s.query.replace(", and ", ", ").split(", ")
    assert len(asked) == spec.queries
    per_key = [s.answers[i * spec.values:(i + 1) * spec.values] for i in range(len(asked))]
    assert [sorted(found[k]) for k in asked] == [sorted(v) for v in per_key]
    value = r"\d{7}" if spec.value == "numbers" else r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert all(re.fullmatch(value, a) for a in s.answers)
    tail = smol_tokenizer.decode(ids[s.context_start + s.context_tokens:])
    assert tail.count(s.query) == 2  # in the question and in the answer prefix
    if spec.haystack == "needles":
        assert len(pairs) > 50  # a haystack of distractor needles
    else:
        assert len(pairs) == len(s.needles)


def test_a_needle_before_the_first_line_keeps_the_length(builder):
    chain = ["VAR AAAAA = 12345", "VAR BBBBB = VAR AAAAA"]
    context, needles = builder.fill(builder.stream("noise"), 300, chain, lambda bounds, hay: [0, 2])
    assert len(context) == 300 and [n["offset"] for n in needles][0] == 0
    lines = builder.tokenizer.decode(context).split("\n")
    assert lines[:4] == [chain[0], rt.NOISE, rt.NOISE, chain[1]] and rt.NOISE.startswith(lines[-1])


def test_book_haystack_is_the_held_out_plays(builder):
    s = builder.build("niah_single_2", 3000, 0, seed=0)
    assert "HAMLET, PRINCE OF DENMARK" in context_text(builder, s)
    assert "The grass is green" in context_text(builder, builder.build("niah_single_1", 3000, 0, seed=0))


def test_vt_chain_resolves_to_the_answer(builder):
    s = builder.build("vt", 4096, 2, seed=5)
    assigned: dict[str, str] = {}
    for line in context_text(builder, s).split("\n"):
        if m := re.fullmatch(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d{5})", line.strip()):
            assigned[m.group(1)] = m.group(2)

    def resolve(name: str) -> str:
        v = assigned[name]
        return resolve(v[4:]) if v.startswith("VAR ") else v

    assert sorted(v for v in assigned if resolve(v) == s.query) == sorted(s.answers)
    assert len(s.answers) == rt.VT_HOPS + 1 and len(s.needles) == rt.VT_HOPS + 1
    assert [n["text"] for n in s.needles] == s.info["chain"]  # in chain order down the haystack
    # RULER's worked example (3-letter names, its answer given) comes first
    example = builder.tokenizer.decode(list(s.ids[: s.context_start]))
    assert re.search(r"they are: [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3}\n", example)
    assert rt.VT_EXAMPLE_TOKENS - 40 <= s.info["example_tokens"] <= rt.VT_EXAMPLE_TOKENS + 40


@pytest.mark.parametrize("length", [1500, 4096, 9000])
def test_cwe_counts_are_rulers(builder, length):
    s = builder.build("cwe", length, 1, seed=2)
    items = re.findall(r"(\d+)\. (\S+)", context_text(builder, s))
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    counts = Counter(w for _, w in items)
    fc, fu = rt.CWE_FREQ["long" if length >= rt.CWE_LONG_FROM else "short"]
    assert {w: counts[w] for w in s.answers} == {w: fc for w in s.answers}
    assert set(counts.values()) == {fc, fu} and len(counts) == rt.CWE_COMMON + s.info["uncommon_words"]
    assert [w for w, _ in counts.most_common(rt.CWE_COMMON)] and {w for w, c in counts.items() if c == fc} == set(s.answers)
    assert s.info["pad_tokens"] < fu or s.info["pad_tokens"] == 0
    before = builder.tokenizer.decode(list(s.ids[: s.context_start]))
    assert "Answer: The top 10 words that appear most often in the list are: 1. " in before  # the worked example


@pytest.mark.parametrize("length", [800, 5000])
def test_fwe_top_three_are_the_answers(builder, length):
    s = builder.build("fwe", length, 0, seed=3)
    counts = Counter(w for w in context_text(builder, s).split() if not set(w) <= {"."})
    top = counts.most_common(4)
    assert {w for w, _ in top[:3]} == set(s.answers)
    assert top[2][1] >= top[3][1] + 2
    assert all(re.fullmatch(r"[a-z]{6}", w) for w in s.answers)


def test_samples_are_seeded_and_independent_of_what_else_is_asked(smol_tokenizer):
    a, b = Builder(smol_tokenizer, "plain"), Builder(smol_tokenizer, "plain")
    first = ru.build_samples(a, ["niah_single_2", "cwe"], [1200, 2400], 2, seed=0)
    again = ru.build_samples(b, ["cwe"], [2400], 2, seed=0)
    assert [list(s.ids) for s in first if s.task == "cwe" and s.length == 2400] == [list(s.ids) for s in again]
    other = ru.build_samples(a, ["niah_single_2"], [1200], 2, seed=1)
    assert [s.answers for s in other] != [s.answers for s in first[:2]]


def test_too_short_a_length_is_refused_in_one_line(builder):
    for task in ("cwe", "vt", "niah_multikey_3", "fwe"):
        with pytest.raises(PosinterpError, match=f"too short for {task}") as err:
            builder.build(task, 150, 0, 0)
        assert "\n" not in str(err.value)


# --- scoring and effective lengths --------------------------------------------------------------------


@pytest.mark.parametrize("output, refs, score", [
    (" 1234567.", ["1234567"], 100.0), ("the number is 7654321", ["1234567"], 0.0),
    ("1234567 and 2345678", ["1234567", "2345678", "3456789", "4567890"], 50.0),
    ("ABCDE, FGHIJ", ["abcde", "fghij"], 100.0), ("\x00 Apple\x1fpear ", ["apple", "PEAR"], 100.0), ("", ["x"], 0.0),
])
def test_string_match_all_on_hand_written_outputs(output, refs, score):
    assert rt.string_match_all(output, refs) == score


def test_wilson_interval_against_known_values():
    assert rs.wilson(0, 10) == (0.0, 27.75)
    assert rs.wilson(10, 10) == (72.25, 100.0)
    assert rs.wilson(5, 10) == (23.66, 76.34)
    assert rs.cell([100.0, 50.0, 100.0, 0.0]) == {"samples": 4, "score": 62.5, "passed": 2, "pass_rate": 50.0,
                                                  "wilson95": list(rs.wilson(2, 4))}


def test_effective_length_rules_on_made_up_tables(tmp_path):
    assert rs.effective_length({4096: 90.0, 8192: 86.0, 16384: 80.0, 32768: 88.0}, 85.6) == 8192
    assert rs.effective_length({4096: 85.6, 8192: 99.0}, 85.6) == 8192
    assert rs.effective_length({4096: 50.0, 8192: 99.0}, 85.6) == 0
    table = {t: {"2048": {"score": 80.0}, "4096": {"score": 60.0}, "8192": {"score": 10.0}} for t in ("vt", "cwe")}
    table["cwe"]["2048"]["score"] = 70.0
    ref = {"kind": "ruler", "window": 4096, "label": "orig", "summary": {"table": table}, "prompt": {"kind": "chat"}}
    (tmp_path / "results.json").write_text(json.dumps(ref))
    base = rs.read_reference(tmp_path, ["vt", "cwe"])
    assert base["reference_lengths"] == [2048, 4096] and base["base"] == 67.5  # (75 + 60) / 2: 8192 is beyond
    records = [{"task": t, "length": n, "score": s} for t in ("vt", "cwe") for n, s in ((4096, 70.0), (8192, 57.0),
                                                                                        (16384, 40.0))]
    summary = rs.summarize(records, ["vt", "cwe"], [4096, 8192, 16384], base)
    rel = summary["effective_length"]["relative"]
    assert rel["threshold"] == round(0.856 * 67.5, 2) == 57.78 and rel["length"] == 4096  # 57 < 57.78 at 8192
    assert summary["effective_length"]["absolute"]["length"] == 0 and summary["average"]["4096"] == 70.0


def test_reference_refusals(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"kind": "passkey"}))
    (tmp_path / "b.json").write_text(json.dumps({"kind": "ruler", "window": 4096,
                                                 "summary": {"table": {"vt": {"8192": {"score": 1.0}}}}}))
    for path, match in (("a.json", "not an `eval ruler` result"), ("b.json", "no results for cwe"),
                        ("missing.json", "cannot read")):
        with pytest.raises(PosinterpError, match=match):
            rs.read_reference(tmp_path / path, ["vt", "cwe"])
    with pytest.raises(PosinterpError, match="within its window"):
        rs.read_reference(tmp_path / "b.json", ["vt"])


# --- decoding, refusals, CLI --------------------------------------------------------------------------


def test_shared_prefix_gives_the_same_answers_as_separate_prefills(smol_tokenizer):
    model = make_tiny(window=2048, seed=4).to(torch.float32)
    builder = Builder(smol_tokenizer, "plain")
    samples = ru.build_samples(builder, ["niah_single_1", "niah_single_2"], [700, 1100], 5, seed=0)
    shared, timing = ru.run_samples(model, smol_tokenizer, samples, max_new_tokens=4, progress=False)
    separate, _ = ru.run_samples(model, smol_tokenizer, samples, max_new_tokens=4, share_prefix=False, progress=False)
    assert [r["output"] for r in shared] == [r["output"] for r in separate]
    branched = [r for r in shared if r["shared_prefix"]]
    assert len(branched) >= 4 and all(r["prefill_tokens"] < r["tokens"] for r in branched)
    assert {g["tasks"][0] for g in timing["shared_prefixes"]} == {"niah_single_1", "niah_single_2"}
    cell = timing["per_task_length"]["niah_single_1"]["1100"]
    assert cell["samples"] == 5 and cell["prompt_tokens"] == 5 * 1100 and cell["prefill_tokens"] < 5 * 1100


def test_flags_and_defaults():
    assert ru.parse_tasks("all") == list(rt.TASKS) and ru.parse_tasks("vt,cwe") == ["vt", "cwe"]
    assert ru.default_lengths(16384) == [4096, 8192, 16384] and ru.default_lengths(2048) == [2048]
    assert [ru.samples_at(n, None) for n in (1024, 4096, 8192)] == [10, 10, 5] and ru.samples_at(8192, 3) == 3


def test_errors_come_before_any_model_is_loaded(tiny_dir, tmp_path, monkeypatch):
    folder = tiny_dir(window=1024)
    (tmp_path / "pk.json").write_text(json.dumps({"kind": "passkey"}))

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(common, "load", no_load)
    cases = [(dict(tasks="niah_singel_1"), "did you mean niah_single_1"), (dict(lengths="2048"), "allow-beyond-window"),
             (dict(lengths="200", tasks="cwe"), "too short for cwe"), (dict(samples=0), "--samples 0"),
             (dict(reference=tmp_path / "pk.json"), "not an `eval ruler` result"), (dict(lengths="x"), "--lengths"),
             (dict(max_new_tokens=0), "--max-new-tokens 0"), (dict(prompt_format="chatml"), "--prompt-format")]
    for case, match in cases:
        with pytest.raises(PosinterpError, match=match) as err:
            ru.ruler(str(folder), **{"lengths": "1000", **case})
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_runs_every_task_and_writes_results(tiny_dir, tmp_path, capsys):
    from posinterp.__main__ import main

    folder = tiny_dir(window=1024)
    out = tmp_path / "ruler"
    argv = ["eval", "ruler", str(folder), "--lengths", "1000,1500", "--samples", "1", "--max-new-tokens", "3",
            "--seed", "7", "--rope", "pi:2", "--dtype", "float32", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["kind"] == "ruler" and result["tasks"] == list(rt.TASKS) and result["lengths"] == [1000, 1500]
    assert result["prompt"]["kind"] == "chat" and result["config"]["seed"] == 7
    assert result["rope"] == "pi:2" and result["window"] == 2048 and result["rope_parameters"]["factor"] == 2
    assert len(result["samples"]) == 2 * len(rt.TASKS)
    assert all(r["tokens"] == r["length"] and r["new_tokens"] <= 3 for r in result["samples"])
    s = result["summary"]
    assert set(s["table"]) == set(rt.TASKS) and set(s["average"]) == {"1000", "1500"}
    assert s["effective_length"]["absolute"]["threshold"] == 85.6 and s["effective_length"]["relative"]["length"] is None
    assert set(result["timings"]["per_task_length"]["vt"]) == {"1000", "1500"}
    assert result["protocol"]["tasks"]["niah_single_1"]["max_new_tokens"] == 3
    md = (out / "results.md").read_text()
    assert "| niah_multiquery |" in md and "**average**" in md
    # the original model's run as the reference of another: the relative rule is computed
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(argv[:-1] + [str(again), "--tasks", "vt,fwe", "--reference", str(out)]) == 0
    rel = json.loads((again / "results.json").read_text())["summary"]["effective_length"]["relative"]
    assert rel["reference_lengths"] == [1000, 1500] and rel["threshold"] is not None
