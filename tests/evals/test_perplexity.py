"""Sliding-window perplexity: token accounting, equality to the naive computation, --rope, errors, results."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_tiny

from posinterp.errors import PosinterpError
from posinterp.evals import common
from posinterp.evals import perplexity as pp
from posinterp.model import rope as rope_mod


@pytest.mark.parametrize("n, window, stride", [(1000, 256, 64), (1000, 256, 255), (257, 256, 64), (256, 256, 64),
                                               (100, 256, 64), (2, 8, 1), (1030, 100, 7), (999, 1000, 256)])
def test_every_token_is_scored_once_with_up_to_window_minus_one_context(n, window, stride):
    spans = pp.windows(n, window, stride)
    scored = [p for _, end, first in spans for p in range(first, end)]
    assert sorted(scored) == list(range(1, n))  # all but the first token, each exactly once
    begin, end, first = spans[0]
    assert (begin, first) == (0, 1) and end == min(window, n)  # the first window scores all its tokens
    for i, (begin, end, first) in enumerate(spans):
        assert begin == i * stride and end - begin <= window
        assert first - begin >= 1  # context of the first scored token: at least one token
        assert end - 1 - begin <= window - 1  # of the last: at most W - 1
        if i:
            assert first - begin >= window - stride or end == n  # later windows: at least W - S context


def test_short_and_empty_documents():
    assert pp.windows(100, 256, 64) == [(0, 100, 1)]  # scored at its own length
    assert pp.windows(1, 256, 64) == [] and pp.windows(0, 256, 64) == []


@pytest.fixture(scope="module")
def fp32_tiny():
    return make_tiny(window=512, seed=5).to(torch.float32)


def _docs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 49152, (n,), generator=g).tolist() for n in (500, 130, 1, 257)]


@pytest.mark.parametrize("window, stride, batch", [(256, 64, 1), (256, 64, 3), (128, 127, 2), (512, 256, 1)])
def test_fast_scoring_equals_the_naive_reference_in_fp32(fp32_tiny, window, stride, batch):
    docs = _docs()
    fast = pp.score(fp32_tiny, docs, window, stride, batch_size=batch, progress=False)
    ref = pp.reference(fp32_tiny, docs, window, stride)
    assert [n for _, n in fast] == [n for _, n in ref] == [max(len(d) - 1, 0) for d in docs]
    for (a, _), (b, _) in zip(fast, ref):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


def test_logits_only_where_scored_equal_the_full_logits(fp32_tiny):
    ids = torch.tensor([_docs(1)[0][:300]])
    with common.eval_mode(fp32_tiny):
        full = torch.log_softmax(fp32_tiny(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
        hidden = common.decoder(fp32_tiny)(input_ids=ids).last_hidden_state[0]
        head = common.Head(fp32_tiny)
        rows = slice(200, 299)
        part = head.log_probs_of(hidden[rows], ids[0, 201:300])
    torch.testing.assert_close(part, full[rows].gather(-1, ids[0, 201:300, None])[:, 0], rtol=1e-5, atol=1e-5)


def test_bf16_body_stays_close_to_fp32():
    docs = _docs(2)[:1]
    model = make_tiny(window=512, seed=6)
    exact = pp.score(model.to(torch.float32), docs, 256, 64, progress=False)[0][0]
    fast = pp.score(model.to(torch.bfloat16), docs, 256, 64, progress=False)[0][0]
    assert fast == pytest.approx(exact, rel=2e-2)


@pytest.mark.parametrize("rope, rope_type, window", [("none", "default", 512), ("pi:2", "linear", 1024),
                                                     ("ntk:2", "default", 1024), ("yarn:4", "yarn", 2048),
                                                     ("dynamic:2", "dynamic", 1024)])
def test_rope_flag_configures_the_loaded_model(tiny_dir, rope, rope_type, window):
    folder = tiny_dir(window=512)
    cfg = pp.PerplexityConfig(str(folder), rope=rope, windows="256", stride=64)
    prep = common.prepare(cfg, 256, "window", "--windows")
    model, _, info = common.load(cfg)
    params = common.rope_parameters(model.config)
    assert params["rope_type"] == rope_type and prep.window == window
    assert rope_mod.window(model.config) == window and info["method"] == rope.split(":")[0]
    if rope == "pi:2":
        assert params["factor"] == 2 and params["rope_theta"] == 10000.0
    if rope == "ntk:2":
        assert params["rope_theta"] > 10000.0
    from posinterp.machine import choose_precision

    assert model.dtype == choose_precision("auto").torch_dtype  # bf16 where it is fast, fp32 on AVX2


def _write(path, text):
    path.write_text(text)
    return path


def test_errors_are_one_line_and_come_before_loading(tiny_dir, tmp_path, monkeypatch):
    folder = tiny_dir(window=512)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(common, "load", no_load)
    empty = _write(tmp_path / "empty.txt", "  \n")
    rows = _write(tmp_path / "rows.jsonl", json.dumps({"body": "some text here"}) + "\n")
    text = _write(tmp_path / "a.txt", "hello world " * 50)
    cases = [
        (dict(data=str(empty), windows="300"), "no non-empty documents"),
        (dict(data=str(rows), windows="300"), "--text-field"),
        (dict(data=str(tmp_path / "missing*.txt"), windows="300"), "matches no file"),
        (dict(data=str(text), windows="1024"), "allow-beyond-window"),
        (dict(data=str(text), windows="256", stride=512), "--stride"),
        (dict(data=str(text), windows="256", stride=256), "--stride"),
        (dict(data=str(text), windows="2k"), "--windows"),
        (dict(data=str(text), windows="256", stride=0), "--stride"),
        (dict(data=str(text), windows="128,256", stride="64,64,64"), "one per window"),
        (dict(data=str(text), windows="128,256", stride="64,256"), "--stride 256"),
        (dict(data=str(text), windows="256", stride="a"), "--stride"),
        (dict(data=str(text), windows="300", rope="pi"), "--rope"),
        (dict(data=str(text), windows="300", max_tokens=1), "--max-tokens"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PosinterpError, match=message.replace("-", r"\-")) as err:
            pp.perplexity(str(folder), **kwargs)
        assert "\n" not in str(err.value)


def test_cli_results_name_the_corpus_count_short_documents_and_are_atomic(tiny_dir, tmp_path, capsys):
    from posinterp.__main__ import main

    folder = tiny_dir(window=512)
    data = tmp_path / "books"
    data.mkdir()
    _write(data / "long.txt", " ".join(f"word{i % 97}" for i in range(1500)))
    _write(data / "short.txt", "A short document of a few words.")
    out = tmp_path / "ppl"
    assert main(["eval", "ppl", str(folder), "--data", str(data / "*.txt"), "--windows", "128,512",
                 "--stride", "64", "--max-tokens", "900", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["kind"] == "perplexity" and result["corpus"] == str(data / "*.txt")
    assert [d["tokens"] for d in result["documents"]][0] == 900
    assert result["documents"][0]["tokens_before_truncation"] > 900
    w128, w512 = result["windows"]
    assert w128["window"] == 128 and w128["short_documents"] == 1 and w512["short_documents"] == 1
    assert w128["tokens_scored"] == sum(d["tokens"] - 1 for d in result["documents"])
    assert any("shorter than the window" in n for n in result["notes"])
    nll = sum(d["nll_sum"] for d in w512["documents"])
    assert w512["perplexity"] == pytest.approx(math.exp(nll / w512["tokens_scored"]))
    assert w128["stride"] == w512["stride"] == 64 and "transformers" in result["versions"]
    assert result["attention"] == "sdpa"  # the kernel chosen by measurement is recorded
    assert (out / "perplexity.png").stat().st_size > 0 and "shorter than the window" in (out / "results.md").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    capsys.readouterr()
    assert main(["eval", "ppl", str(folder), "--data", str(data), "--windows", "128", "--stride", "64", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_builtin_corpus_is_named(tiny_dir):
    folder = tiny_dir(window=256)
    result = pp.perplexity(str(folder), data="pydoc", windows="128", stride=64, max_tokens=300, max_docs=1)
    assert result["corpus"].startswith("pydoc:test") and len(result["documents"]) == 1


def test_one_stride_per_window_is_used_for_its_window(tiny_dir, tmp_path):
    folder = tiny_dir(window=512)
    text = _write(tmp_path / "a.txt", " ".join(f"word{i % 89}" for i in range(1200)))
    result = pp.perplexity(str(folder), data=str(text), windows="512,128", stride="32,256", max_tokens=800)
    w128, w512 = result["windows"]
    assert (w128["window"], w128["stride"]) == (128, 32) and (w512["window"], w512["stride"]) == (512, 256)
    assert w128["forward_windows"] == len(pp.windows(800, 128, 32))
    assert w512["forward_windows"] == len(pp.windows(800, 512, 256))
    assert pp.strides_for([8192, 2048], "1024, 4096") == {2048: 1024, 8192: 4096}
