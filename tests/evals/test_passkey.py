"""Passkey retrieval: the template at exact token lengths, key depths, answers, k_max, decoding, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny

from posinterp.errors import PosinterpError
from posinterp.evals import common
from posinterp.evals import passkey as pk


@pytest.fixture(scope="module")
def builder(smol_tokenizer):
    return pk.PromptBuilder(smol_tokenizer)


@pytest.mark.parametrize("length", [128, 1000, 1024, 3000, 16384])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_prompt_has_the_asked_length_in_model_tokens(builder, smol_tokenizer, length, depth):
    trial = builder.build(length, depth, "48213")
    assert len(trial.ids) == length
    # the text, tokenized afresh as another tool would, is within 1% of the asked length
    retokenized = len(smol_tokenizer(builder.text(trial))["input_ids"])
    assert abs(retokenized - length) <= 0.01 * length


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_key_sits_at_its_depth(builder, smol_tokenizer, depth):
    trial = builder.build(4096, depth, "70561")
    # the share of filler before the key is the depth, to within one filler sentence (≤ 6 tokens)
    assert abs(trial.filler_before - depth * trial.filler_tokens) <= 6
    key_ids = smol_tokenizer(pk.KEY.format(key="70561"), add_special_tokens=False)["input_ids"]
    assert list(trial.ids[trial.key_position: trial.key_position + len(key_ids)]) == key_ids
    # and the position is where the text puts it
    text = builder.text(trial)
    before = smol_tokenizer.decode(list(trial.ids[: trial.key_position]))
    assert text.index("The pass key is 70561") == len(before)


def test_template_is_the_papers(builder):
    text = builder.text(builder.build(600, 0.5, "12345"))
    task, *middle, question = text.split("\n")
    assert task == pk.TASK and question == pk.QUESTION
    assert pk.KEY.format(key="12345") in middle
    filler = [line for line in middle if line != pk.KEY.format(key="12345")]
    assert all(line.startswith("The grass is green. The sky is blue.") for line in filler)
    assert text.count("12345") == 2


def test_too_short_a_length_is_refused(builder):
    with pytest.raises(PosinterpError, match="shorter than the passkey template"):
        builder.build(40, 0.5, "12345")


def test_depth_grid_and_spread():
    assert pk.trial_depths(5, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert pk.trial_depths(6, 3) == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    assert pk.trial_depths(3, 0) == [0.0, 0.5, 1.0]
    assert pk.trial_depths(1, 0) == [0.5]


def test_keys_are_seeded_five_digit_and_independent_of_other_lengths(builder):
    a = pk.build_trials(builder, [200, 400], 4, 0, seed=1)
    b = pk.build_trials(builder, [400], 4, 0, seed=1)
    c = pk.build_trials(builder, [200, 400], 4, 0, seed=2)
    assert [t.key for t in a] == [t.key for t in pk.build_trials(builder, [200, 400], 4, 0, seed=1)]
    assert [t.key for t in a if t.length == 400] == [t.key for t in b]
    assert [t.key for t in a] != [t.key for t in c]
    assert all(len(t.key) == 5 and t.key.isdigit() and t.key[0] != "0" for t in a + c)


@pytest.mark.parametrize("text, answer", [
    (" 12345.", "12345"), (" 12345 is the pass key", "12345"), ("\n98765", "98765"),
    (" 123456", None), (" 1234", None), (" 1 2 3 4 5", None), ("", None), (" is 4321 or 54321.", "54321"),
])
def test_answer_is_the_first_run_of_exactly_five_digits(text, answer):
    assert pk.parse_answer(text) == answer


def test_k_max_by_the_twenty_percent_rule():
    assert pk.k_max({1024: 1.0, 2048: 0.2, 3072: 0.1, 4096: 1.0}) == 2048
    assert pk.k_max({1024: 0.1, 2048: 1.0}) == 0
    assert pk.k_max({1024: 1.0, 2048: 0.5, 4096: 0.3}) == 4096
    assert pk.k_max({8192: 1.0, 1024: 0.0}) == 0  # order of the dict does not matter
    assert pk.k_max({1024: 0.3, 2048: 0.19}) == 1024


def test_summary_grid_and_rates():
    records = [{"length": n, "depth": d, "correct": c} for n, d, c in
               [(100, 0.0, True), (100, 1.0, False), (200, 0.0, False), (200, 1.0, False)]]
    s = pk.summarize(records)
    assert s["k_max"] == 100
    assert s["per_length"] == [{"length": 100, "accuracy": 0.5, "trials": 2}, {"length": 200, "accuracy": 0.0, "trials": 2}]
    assert s["grid"]["accuracy"] == [[1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("text", ["1024:16384", "a,b", "10:5:3", "0,100", "", "1:2:0"])
def test_unparsable_lengths_are_one_line_errors(text):
    with pytest.raises(PosinterpError) as err:
        common.parse_lengths(text)
    assert "\n" not in str(err.value) and "--lengths" in str(err.value)


def test_lengths_ranges_are_uniform():
    assert common.parse_lengths("1024:16384:16") == list(range(1024, 16385, 1024))
    assert common.parse_lengths("8192, 2048") == [2048, 8192]
    assert common.parse_lengths("100:100:1") == [100]


def test_decoder_matches_generate_and_shared_prefix_matches_full_prefill(builder, smol_tokenizer):
    """Greedy decoding with the fp32 head equals transformers' generate; branching from a cropped
    prefix cache gives the same hidden state as prefilling the whole prompt."""
    model = make_tiny(window=1024, seed=3)
    dec = pk.Decoder(model, max_new_tokens=6)
    trial = builder.build(300, 0.5, "31337")
    with common.eval_mode(model):
        ids = torch.tensor([trial.ids])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(trial.ids):].tolist()
        dec.eos = set()
        assert dec.generate(list(trial.ids)) == ref
        full, _ = dec.forward(list(trial.ids))
        _, cache = dec.forward(list(trial.ids[: trial.prefix_len + 20]))
        branched, _ = dec.forward(list(trial.ids[trial.prefix_len:]), pk.crop(cache, trial.prefix_len))
    torch.testing.assert_close(branched, full, rtol=1e-5, atol=1e-5)


def test_shared_and_separate_prefills_answer_the_same(builder, smol_tokenizer, monkeypatch):
    model = make_tiny(window=1024, seed=4).to(torch.float32)
    trials = pk.build_trials(builder, [200, 333], 5, 0, seed=0)
    branched = []
    monkeypatch.setattr(pk, "crop", lambda cache, n, crop=pk.crop: branched.append(n) or crop(cache, n))
    shared = pk.run_trials(model, smol_tokenizer, trials, share_prefix=True, progress=False)
    # deep keys branch from the shared prefix, the others prefill
    assert sorted(branched) == sorted(t.prefix_len for t in trials if t.prefix_len >= pk.BRANCH_FROM * t.length)
    assert len(branched) >= 3
    separate = pk.run_trials(model, smol_tokenizer, trials, share_prefix=False, progress=False)
    assert [r["output"] for r in shared] == [r["output"] for r in separate]
    assert [r["length"] for r in shared] == [t.length for t in trials]


def test_errors_come_before_any_model_is_loaded(tiny_dir, monkeypatch):
    folder = tiny_dir(window=512)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(common, "load", no_load)
    cases = [dict(lengths="1024", trials=1), dict(lengths="x", trials=1), dict(lengths="512", trials=0),
             dict(lengths="30", trials=1), dict(lengths="512", trials=1, rope="pi:0.5"),
             dict(lengths="512", trials=1, rope="linear:2"), dict(lengths="512", trials=1, device="gpu"),
             dict(lengths="512", trials=1, device="cuda:7")]
    for case in cases:
        with pytest.raises(PosinterpError) as err:
            pk.passkey(str(folder), **case)
        assert "\n" not in str(err.value)
    with pytest.raises(PosinterpError, match="allow-beyond-window"):
        pk.passkey(str(folder), lengths="1024", trials=1)


def test_cli_writes_results_atomically_and_records_the_run(tiny_dir, tmp_path, capsys):
    from posinterp.__main__ import main

    folder = tiny_dir(window=512)
    out = tmp_path / "pk"
    argv = ["eval", "passkey", str(folder), "--lengths", "200,1024", "--trials", "2", "--depths", "2",
            "--seed", "7", "--rope", "yarn:2", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["kind"] == "passkey" and result["rope"] == "yarn:2" and result["window"] == 1024
    assert result["rope_parameters"]["rope_type"] == "yarn" and result["rope_parameters"]["factor"] == 2
    assert result["config"]["seed"] == 7 and result["allow_beyond_window"] is False
    assert result["lengths"] == [200, 1024] and len(result["trials"]) == 4
    assert {t["depth"] for t in result["trials"]} == {0.0, 1.0}
    assert all(t["tokens"] == t["length"] for t in result["trials"])
    assert "torch" in result["versions"] and "eval" in result["timings"]
    assert (out / "heatmap.png").stat().st_size > 0 and (out / "results.md").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a non-empty --out is refused (one line), and replaced with --force
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1
    assert main(argv + ["--force"]) == 0
    # the same seed gives the same keys
    assert [t["key"] for t in json.loads((out / "results.json").read_text())["trials"]] == \
        [t["key"] for t in result["trials"]]


def test_extrapolation_beyond_the_window_needs_the_flag_and_is_recorded(tiny_dir):
    folder = tiny_dir(window=256)
    result = pk.passkey(str(folder), lengths="300", trials=1, allow_beyond_window=True)
    assert result["allow_beyond_window"] is True and result["window"] == 256


@pytest.mark.slow
def test_smollm2_retrieves_the_key_at_2048():
    result = pk.passkey("smollm2-135m", lengths="2048", trials=2)
    assert result["summary"]["per_length"][0]["accuracy"] == 1.0, result["trials"]
    assert result["summary"]["k_max"] == 2048
