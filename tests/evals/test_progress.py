"""The evals' expected time and ETA lines."""

from __future__ import annotations

import pytest

from posinterp.evals import progress as pg


def test_clock_reads_like_a_person_would_say_it():
    assert [pg.clock(s) for s in (0, 9.6, 62, 3599, 3700)] == ["0s", "10s", "1m02s", "59m59s", "1h01m"]


def test_eta_is_the_remaining_weight_at_the_pace_so_far(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(pg.time, "perf_counter", lambda: now[0])
    with caplog.at_level("INFO", logger=pg.__name__):
        bar = pg.Progress("ppl", [1, 1, 2], expected_s=40, source="priced")
        now[0] += 10
        bar.done("first")
        now[0] += 10
        bar.done()
        now[0] += 20
        bar.done()
        bar.done()  # past the end: nothing
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["ppl: 3 units, expected ≈ 40s here (priced)",
                     "ppl 1/3 (first): 10s elapsed, ETA 30s",  # 1 of 4 weight units in 10 s: 3 left
                     "ppl 2/3: 20s elapsed, ETA 20s",
                     "ppl 3/3: 40s elapsed, ETA 0s"]


def test_without_a_cached_probe_it_says_the_time_comes_from_the_first_unit(caplog):
    with caplog.at_level("INFO", logger=pg.__name__):
        pg.Progress("passkey", [5, 5])
        pg.Progress("quiet", [1], enabled=False).done()
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("passkey: 2 units; no stage probe of this model cached here")


def test_ppl_prices_its_windows_from_the_cached_stage_probe(tiny_dir, tmp_path, monkeypatch, caplog):
    """With a Speed cached for this model's shape, eval ppl opens with the expected time; the ETA lines follow."""
    from posinterp import speed
    from posinterp.evals.perplexity import perplexity

    model_dir = tiny_dir()
    (tmp_path / "d.txt").write_text("word " * 600)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    measured = speed.Speed("fp32", {64: 0.01, 128: 0.03}, {64: 0.1, 128: 0.3}, 0.01, 1e-5, {64: 1e-4, 128: 4e-4}, 2)
    speed.remember_speed(config, measured)
    assert speed.cached_speed(config, "fp32")[0].forward == measured.forward
    with caplog.at_level("INFO"):
        perplexity(str(model_dir), data=str(tmp_path / "d.txt"), windows="128", stride=64, dtype="float32",
                   device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == pg.__name__]
    assert "expected ≈" in lines[0] and "stage probe cached here" in lines[0], lines
    assert any("ETA" in line for line in lines[1:])
    assert pytest.approx(measured.forward_s(128)) == measured.per_token_s * 128 + 2 * measured.attention_s(128)
