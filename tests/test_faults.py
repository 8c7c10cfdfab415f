"""Damaged inputs are refused with one line naming the file, through the CLI, before anything is written.

What an interrupted download or copy leaves (an unreadable config.json, no weights, a truncated
.safetensors, a sharded index without its shard, a cut or foreign .gguf, a broken tokenizer) and a
checkpoint marked complete whose files are damaged under `train --resume`.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from posinterp import errors
from posinterp.__main__ import main
from posinterp.model import facts, loader, refs
from posinterp.train import checkpoint

TRAIN = ["--data", "pydoc", "--seq-len", "32", "--tensorboard", "false", "--lr", "1e-3", "--warmup", "0"]


@pytest.fixture(scope="module")
def good(tmp_path_factory, smol_tokenizer) -> Path:
    """A sound tiny llama (window 256) saved whole and as two shards."""
    from conftest import make_tiny, save_tiny

    root = tmp_path_factory.mktemp("good")
    model = make_tiny(window=256)
    save_tiny(root / "tiny", smol_tokenizer, model=model)
    model.save_pretrained(root / "sharded", max_shard_size="1MB")
    smol_tokenizer.save_pretrained(root / "sharded")
    assert len(list((root / "sharded").glob("model-*.safetensors"))) == 2
    return root


def _gguf_source() -> Path:
    ref = refs.resolve("smollm2-135m")
    return ref.folder / ref.gguf_file


def _damage(kind: str, good: Path, tmp: Path) -> Path:
    """A damaged copy of the good model; returns what to pass as the model argument."""
    if kind.startswith("gguf"):
        path = tmp / "model.gguf"
        if kind == "gguf-truncated":  # the first 64 KiB of the real file: the metadata stops mid-way
            with open(_gguf_source(), "rb") as fh:
                path.write_bytes(fh.read(1 << 16))
        else:  # a file named .gguf that is something else (an HTML error page, say)
            path.write_bytes(b"<!DOCTYPE html><title>404</title>" * 8)
        return path
    folder = tmp / kind
    shutil.copytree(good / ("sharded" if kind == "missing-shard" else "tiny"), folder)
    if kind == "config-json":
        (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 6')
    elif kind == "no-weights":
        (folder / "model.safetensors").unlink()
    elif kind == "truncated-safetensors":
        weights = folder / "model.safetensors"
        os.truncate(weights, weights.stat().st_size // 2)
    elif kind == "missing-shard":
        (folder / "model-00002-of-00002.safetensors").unlink()
    elif kind == "tokenizer":
        (folder / "tokenizer.json").write_text('{"version": "1.0", "truncat')
    elif kind in FACTS:  # a readable config.json with a value no model can have
        config = json.loads((folder / "config.json").read_text())
        key, value = FACTS[kind]
        if key == "rope_theta":
            config.setdefault("rope_parameters", {})["rope_theta"] = value
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return folder


FACTS = {"theta-negative": ("rope_theta", -5), "head-dim-odd": ("head_dim", 15),
         "kv-heads": ("num_key_value_heads", 3), "window-zero": ("max_position_embeddings", 0),
         "layers-fraction": ("num_hidden_layers", 1.5)}
"""Model facts read strictly (`facts.check_facts`): damage → (config.json key, value)."""


# what each damage's one line must name
NAMES = {"config-json": "config.json", "no-weights": "no weights", "truncated-safetensors": "model.safetensors",
         "missing-shard": "model-00002-of-00002.safetensors", "gguf-truncated": "model.gguf",
         "gguf-magic": "not a GGUF file", "tokenizer": "tokenizer",
         **{kind: f"config.json: {key} = " for kind, (key, _) in FACTS.items()}}


def _argv(verb: str, model: Path, out: Path, good: Path) -> list[str]:
    m, o = str(model), str(out)
    return {
        "extend": ["extend", m, "--factor", "2", "--out", o],
        "train": ["train", m, "--out", o, "--steps", "1", *TRAIN],
        "eval ppl": ["eval", "ppl", m, "--data", "pydoc", "--max-docs", "1", "--windows", "64",
                     "--stride", "32", "--out", o],
        "eval passkey": ["eval", "passkey", m, "--lengths", "160", "--trials", "1", "--out", o],
        "eval original": ["eval", "original", m, "--baseline", str(good / "tiny"), "--window", "64",
                          "--checks", "ppl", "--data", "pydoc", "--ppl-docs", "1", "--out", o],
        "eval summarize": ["eval", "summarize", m, "--limit", "1", "--out", o],
        "theory measure": ["theory", "measure", m, "--out", o],
    }[verb]


def _refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must return 2 with exactly one line on stderr, `posinterp: error: ...`."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posinterp: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


CORE = ["extend", "train", "eval ppl", "eval passkey"]
KINDS = list(NAMES)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("verb", CORE)
def test_a_damaged_model_is_refused_in_one_line_and_nothing_is_written(verb, kind, good, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    model = _damage(kind, good, tmp_path)
    out = tmp_path / "out"
    err = _refused(_argv(verb, model, out, good), capsys)
    assert NAMES[kind] in err, err
    assert not out.exists() and not (tmp_path / "out-checkpoints").exists()
    assert not (tmp_path / "cache" / "dense").exists()  # no dense copy of a broken GGUF either


@pytest.mark.parametrize("kind", ["truncated-safetensors", "gguf-magic"])
@pytest.mark.parametrize("verb", ["eval original", "eval summarize", "theory measure"])
def test_the_other_verbs_refuse_a_damaged_model_too(verb, kind, good, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path / "cache"))
    model = _damage(kind, good, tmp_path)
    err = _refused(_argv(verb, model, tmp_path / "out", good), capsys)
    assert NAMES[kind] in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_gguf_cut_after_its_metadata_is_refused_when_read(tmp_path):
    """Cut inside the tensor data: the header parses, the tensor table does not."""
    path = tmp_path / "cut.gguf"
    with open(_gguf_source(), "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(90_000_000))
    ref = refs.resolve(path)  # the magic is right
    with pytest.raises(errors.PosinterpError, match="cut.gguf cannot|config of .*cut.gguf"):
        facts.load_config(ref)


def test_a_config_only_folder_still_resolves_for_planning(good, tmp_path):
    folder = tmp_path / "stand-in"
    folder.mkdir()
    shutil.copy(good / "tiny" / "config.json", folder)
    assert refs.resolve(folder).folder == folder.resolve()
    with pytest.raises(errors.PosinterpError, match="has a config.json but no weights"):
        loader.load_model(refs.resolve(folder))


def test_a_damaged_dense_copy_of_a_gguf_is_made_again(good, tmp_path, monkeypatch):
    """The cached dense copy is checked like any folder; a truncated one is rebuilt, not loaded."""
    calls = []
    monkeypatch.setenv("POSINTERP_CACHE", str(tmp_path))
    ref = refs.ModelRef("x", tmp_path, "model.gguf")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    cached = refs.dense_folder(tmp_path / "model.gguf")
    shutil.copytree(good / "tiny", cached)
    assert refs.dense(ref).folder == cached  # sound: used as is
    weights = cached / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 10)
    import transformers

    def fake(*a, **k):
        calls.append(k.get("gguf_file"))
        raise ValueError("not a real gguf")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(errors.PosinterpError, match="model.gguf cannot be read as a GGUF model"):
        refs.dense(ref)
    assert calls == ["model.gguf"]  # it tried to remake the copy instead of loading the damaged one


# -- a damaged checkpoint under train --resume ------------------------------------------------------
@pytest.fixture(scope="module")
def trained(good, tmp_path_factory) -> Path:
    """A finished 2-step run with complete checkpoints at steps 1 and 2."""
    root = tmp_path_factory.mktemp("trained")
    assert main(["train", str(good / "tiny"), "--out", str(root / "ft"), "--steps", "2", "--save-every", "1",
                 "--keep", "2", *TRAIN]) == 0
    assert [s for s, _ in checkpoint.scan(root / "ft-checkpoints")[0]] == [1, 2]
    return root


def _zip_of_nothing(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/other.txt", "not an optimizer")


BROKEN = {  # damage of step 2 → what the one line names
    "optimizer-missing": (lambda f: (f / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "optimizer-truncated": (lambda f: os.truncate(f / "optimizer.pt", 100), "optimizer.pt is truncated"),
    "state-json": (lambda f: (f / "state.json").write_text('{"step": 2, '), "state.json"),
    "weights-truncated": (lambda f: os.truncate(f / "model.safetensors", 1000), "model.safetensors is truncated"),
    "scheduler-missing": (lambda f: (f / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    "rng-truncated": (lambda f: os.truncate(f / "rng-0.pt", 10), "rng-0.pt is truncated"),
    # a whole zip that torch cannot read: found only when restore loads it, still one line
    "optimizer-foreign": (lambda f: _zip_of_nothing(f / "optimizer.pt"), "optimizer cannot be loaded"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_resume_from_a_damaged_complete_checkpoint_is_refused_naming_it(kind, good, trained, tmp_path, capsys):
    ckpts = tmp_path / "ft-checkpoints"
    shutil.copytree(trained / "ft-checkpoints", ckpts)
    damage, name = BROKEN[kind]
    damage(ckpts / "step-00000002")
    before = sorted((p.relative_to(ckpts), p.stat().st_mtime_ns) for p in ckpts.rglob("*"))
    out = tmp_path / "ft"
    err = _refused(["train", str(good / "tiny"), "--out", str(out), "--steps", "3", "--resume", "true", *TRAIN],
                   capsys)
    assert "step-00000002" in err and name in err, err
    assert "delete that folder to resume from" in err and "--force" in err, err
    if kind != "optimizer-foreign":  # found before any weights load
        assert "step-00000001" in err, err
    assert not out.exists()
    assert sorted((p.relative_to(ckpts), p.stat().st_mtime_ns) for p in ckpts.rglob("*")) == before


def test_deleting_the_damaged_checkpoint_resumes_from_the_previous_one_bit_equal(good, trained, tmp_path):
    """What the refusal says to do works: the run continues from step 1 and ends where a clean run ends."""
    from safetensors.torch import load_file

    ckpts = tmp_path / "ft-checkpoints"
    shutil.copytree(trained / "ft-checkpoints", ckpts)
    os.truncate(ckpts / "step-00000002" / "optimizer.pt", 100)
    shutil.rmtree(ckpts / "step-00000002")
    common = ["--steps", "3", "--save-every", "1", *TRAIN]
    assert main(["train", str(good / "tiny"), "--out", str(tmp_path / "ft"), "--resume", "true", *common]) == 0
    state = json.loads((tmp_path / "ft" / "posinterp.json").read_text())["training"]
    assert state["resumed_from"].endswith("step-00000001") and state["steps_this_run"] == 2
    assert main(["train", str(good / "tiny"), "--out", str(tmp_path / "ref"), *common]) == 0
    a, b = load_file(str(tmp_path / "ft" / "model.safetensors")), load_file(str(tmp_path / "ref" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
