"""train counts its corpus once, before any work: the opening line says how many passes (epochs) the run makes."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from posinterp.__main__ import main
from posinterp.train import setup


def test_the_opening_line_and_settings_give_the_epochs(tiny_dir, smol_tokenizer, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    text = "The quick brown fox jumps over the lazy dog. " * 20
    (tmp_path / "corpus.txt").write_text(text)
    tokens = len(smol_tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # its EOS
    out = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="posinterp.train.setup"):
        assert main(["train", str(tiny_dir()), "--out", str(out), "--data", str(tmp_path / "corpus.txt"),
                     "--seq-len", "32", "--steps", "2", "--batch-size", "3", "--precision", "fp32", "--device", "cpu",
                     "--tensorboard", "false", "--save-every", "0"]) == 0
    epochs = 2 * 3 * 32 / tokens
    settings = json.loads((out / "settings.json").read_text())
    assert settings["corpus_tokens"] == tokens and abs(settings["epochs"] - epochs) < 1e-9
    opening = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("training "))
    assert opening.endswith(f": {epochs:.3g} epochs (passes over its {tokens:,} tokens)"), opening


def test_epochs_of_a_summarize_run_count_pairs():
    cfg = SimpleNamespace(steps=10, task="summarize")
    plan = SimpleNamespace(pairs=[object()] * 4, seq_len=64)
    assert setup._passes(cfg, plan, {"global_batch": 2}, None) == {"epochs": 5.0, "pairs": 4}
    assert setup._passes(cfg, plan, {"global_batch": 2}, {"a": {"documents": 3, "tokens": 125}}) == \
        {"epochs": 10 * 2 * 64 / 128, "corpus_tokens": 128}
