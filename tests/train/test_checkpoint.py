"""Checkpoints: atomic, marked complete, keep-K, incomplete ones skipped, generators restored."""

from __future__ import annotations

import json
import logging
import random

import numpy as np
import pytest
import torch

from posinterp.train import checkpoint


@pytest.fixture
def parts(tiny_dir, smol_tokenizer):
    """A real single-process accelerator, a tiny HF model, its optimizer and scheduler."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import AutoModelForCausalLM

    AcceleratorState._reset_state(True)
    acc = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir(), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    ids = torch.randint(0, 1000, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return acc, model, smol_tokenizer, opt, sched


def _save(root, step, parts, keep=2, lora=False):
    acc, model, tok, opt, sched = parts
    return checkpoint.save(root, step, accelerator=acc, model=model, lm=model, tokenizer=tok, optimizer=opt,
                           scheduler=sched, state={"step": step, "tokens": step * 16, "data": {}},
                           settings={"seq_len": 16}, provenance={"verb": "test"}, lora=lora, keep=keep)


def test_save_writes_a_complete_loadable_checkpoint(tmp_path, parts):
    from transformers import AutoModelForCausalLM

    folder = _save(tmp_path, 3, parts)
    assert folder == tmp_path / "step-00000003" and checkpoint.is_complete(folder)
    for name in ("model.safetensors", "config.json", "optimizer.pt", "scheduler.pt", "rng-0.pt", "state.json",
                 "settings.json", "posinterp.json"):
        assert (folder / name).is_file(), name
    assert not list(tmp_path.glob(".step-*"))  # the temporary folder was renamed into place
    assert json.loads((folder / "state.json").read_text())["step"] == 3
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for (n, a), b in zip(parts[1].state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), n
    opt_state = torch.load(folder / "optimizer.pt", weights_only=True)
    assert torch.equal(opt_state["state"][0]["exp_avg"], parts[3].state_dict()["state"][0]["exp_avg"])


def test_a_save_killed_before_the_rename_leaves_no_checkpoint(tmp_path, parts, monkeypatch):
    _save(tmp_path, 1, parts)

    def boom(tmp, out):
        raise RuntimeError("killed")

    monkeypatch.setattr(checkpoint, "replace_dir", boom)
    with pytest.raises(RuntimeError):
        _save(tmp_path, 2, parts)
    assert not (tmp_path / "step-00000002").exists()
    assert checkpoint.latest(tmp_path) == tmp_path / "step-00000001"
    monkeypatch.undo()
    _save(tmp_path, 3, parts)  # the next save cleans the stale temporary folder
    assert not list(tmp_path.glob(".step-*"))


def test_incomplete_checkpoint_is_skipped_with_a_warning(tmp_path, parts, caplog):
    _save(tmp_path, 1, parts)
    second = _save(tmp_path, 2, parts)
    (second / checkpoint.MARKER).unlink()  # as if killed between the rename and the marker
    with caplog.at_level(logging.WARNING, logger="posinterp.train.checkpoint"):
        assert checkpoint.latest(tmp_path) == tmp_path / "step-00000001"
    assert "skipping incomplete checkpoint" in caplog.text and "step-00000002" in caplog.text
    again = _save(tmp_path, 2, parts)  # re-saving the same step replaces the leftover
    assert checkpoint.is_complete(again)


def test_keep_prunes_to_the_newest(tmp_path, parts):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, parts, keep=2)
    complete, incomplete = checkpoint.scan(tmp_path)
    assert [s for s, _ in complete] == [3, 4] and incomplete == []


def test_lora_checkpoint_saves_only_trainable_tensors(tmp_path, parts):
    model = parts[1]
    for name, p in model.named_parameters():
        p.requires_grad_("norm" in name)
    folder = _save(tmp_path, 1, parts, lora=True)
    from safetensors.torch import load_file

    saved = load_file(str(folder / checkpoint.TRAINABLE))
    assert saved and all("norm" in k for k in saved)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(1.0)
    checkpoint.load_trainable(model, folder)
    for name, p in model.named_parameters():
        if "norm" in name:
            assert torch.equal(p, saved[name])


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(checkpoint.rng_state(), tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.rand(), torch.rand(2))
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2])
