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


def _clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(pg.time, "perf_counter", lambda: now[0])
    return now


def test_the_first_eta_is_the_price_not_an_extrapolation_from_the_first_unit(monkeypatch, caplog):
    """The demo's passkey stage: priced at 80 s, a slow first prompt (warm-up), then the priced pace. Pace =
    (1 − f)·prior + f·observed, f the fraction done: 0.9·8 + 0.1·60 = 13.2 s per unit after the first
    (the old rule, 60 s per unit, said 9m00s); the observed pace takes over as the work gets done."""
    now = _clock(monkeypatch)
    with caplog.at_level("INFO", logger=pg.__name__):
        bar = pg.Progress("passkey", [1] * 10, expected_s=80, source="priced")
        for took in [60] + [5] * 9:
            now[0] += took
            bar.done()
        etas = [r.getMessage().rsplit("ETA ", 1)[1] for r in caplog.records[1:]]
        bar = pg.Progress("ppl", [1, 3], expected_s=None)  # no prior: the pace so far, as before
        now[0] += 10
        bar.done()
    assert etas[0] == pg.clock(9 * (0.9 * 8 + 0.1 * 60)) == "1m59s"
    assert etas[4] == pg.clock(5 * (0.5 * 8 + 0.5 * 80 / 5)) == "1m00s"  # 80 s for 5 units: 16 s observed
    assert etas[-1] == "0s"
    assert caplog.records[-1].getMessage().endswith("ETA 30s")


def test_run_passes_each_stage_its_price_for_the_first_bar(monkeypatch, caplog):
    """Inside `stage_price(s)` the stage's first enabled bar starts from s less what the stage spent before it
    (loading); quiet bars (the probes during a fine-tune) and later bars leave it; outside, no price."""
    now = _clock(monkeypatch)
    with caplog.at_level("INFO", logger=pg.__name__):
        with pg.stage_price(100):
            now[0] += 5  # loading the model
            pg.Progress("quiet", [1], enabled=False).done()
            bar = pg.Progress("passkey", [1, 1, 1, 1], expected_s=20, source="priced by the probe")
            now[0] += 40
            bar.done()
            later = pg.Progress("again", [1, 1])
        outside = pg.Progress("outside", [1, 1])
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("passkey: 4 units, expected ≈ 1m35s here (the stage's price in this run, 1m40s, less 5s "
                        "spent before its first unit)")
    assert lines[1] == "passkey 1/4: 40s elapsed, ETA 1m23s"  # 3 × (0.75·95/4 + 0.25·40) = 83.4 s
    assert later.prior is None and outside.prior is None and bar.prior == 95
    with pg.stage_price(10):
        now[0] += 30  # the stage already spent more than its price: no prior left
        assert pg.Progress("late", [1]).prior is None


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
