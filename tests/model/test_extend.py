"""`extend`: standard checkpoint, every refusal before work, nothing half-written."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from posinterp.errors import PosinterpError
from posinterp.model.extend import ExtendConfig, extend


def _no_temp_left(parent):
    return not [p for p in parent.iterdir() if p.name.startswith(".") and ".tmp-" in p.name]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gpt_neox"])
def test_extend_writes_standard_checkpoint_same_logits(tiny_dir, tmp_path, kind):
    src = tiny_dir(kind)
    out = extend(str(src), factor=4, out=tmp_path / "out")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "posinterp.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    params = cfg["rope_parameters"]
    assert params["rope_type"] == "linear" and params["factor"] == 4.0
    assert cfg["rope_scaling"]["factor"] == 4.0 and cfg["rope_scaling"]["type"] == "linear"
    assert cfg["rope_theta"] == params["rope_theta"]
    assert cfg["max_position_embeddings"] == 1024
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    # a name transformers 4.x knows too (qwen2 keeps its own class, which 4.x maps to Qwen2TokenizerFast)
    assert tok_cfg["model_max_length"] == 1024 and tok_cfg["tokenizer_class"] != "TokenizersBackend"
    prov = json.loads((out / "posinterp.json").read_text())
    assert prov["original_length"] == 256 and prov["factor"] == 4.0 and prov["method"] == "pi"
    assert "torch" in prov["versions"]

    loaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    # the same weights built by hand with the PI rope parameters
    base_cfg = tf.AutoConfig.from_pretrained(src)
    base_cfg.rope_parameters = {**base_cfg.rope_parameters, "rope_type": "linear", "factor": 4.0}
    base_cfg.max_position_embeddings = 1024
    by_hand = tf.AutoModelForCausalLM.from_pretrained(src, config=base_cfg).eval()
    ids = torch.randint(0, 1000, (1, 700))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, by_hand(ids).logits)
    assert _no_temp_left(tmp_path)


def test_tokenizer_config_loads_in_5x_with_the_window(tiny_dir, tmp_path, smol_tokenizer):
    # 5.x saves "TokenizersBackend", a name 4.x refuses; the written name must load here the same
    # tokenizer (tests/model/test_transformers4.py loads it in 4.x)
    src = tiny_dir()
    assert json.loads((src / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    out = extend(str(src), factor=2, out=tmp_path / "out")
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and tok_cfg["model_max_length"] == 512
    # for older readers (4.45 reads no chat_template.jinja, 4.40 no [a, b] merges): both in their old form
    assert tok_cfg["chat_template"] == (out / "chat_template.jinja").read_text()
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert merges[0] == "Ġ t" and all(isinstance(m, str) for m in merges)
    loaded = tf.AutoTokenizer.from_pretrained(out)
    assert loaded.model_max_length == 512
    text = "Hello <|im_start|>user\nthe passkey is 42<|im_end|>"
    assert loaded(text).input_ids == smol_tokenizer(text).input_ids
    chat = [{"role": "user", "content": "hi"}]
    assert (loaded.apply_chat_template(chat, tokenize=False)
            == smol_tokenizer.apply_chat_template(chat, tokenize=False))
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        smol_tokenizer.bos_token, smol_tokenizer.eos_token, smol_tokenizer.pad_token)


def test_target_length_and_library_api(tiny_dir, tmp_path):
    out = extend(ExtendConfig(model=str(tiny_dir()), target_length=640, out=tmp_path / "o"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_parameters"]["factor"] == 2.5 and cfg["max_position_embeddings"] == 640


def test_linear_composes_with_note(tiny_dir, tmp_path, caplog):
    first = extend(str(tiny_dir()), factor=2, out=tmp_path / "a")
    with caplog.at_level("INFO"):
        second = extend(str(first), factor=2, out=tmp_path / "b")
    cfg = json.loads((second / "config.json").read_text())
    assert cfg["rope_parameters"]["factor"] == 4.0 and cfg["max_position_embeddings"] == 1024
    assert "factors multiply" in caplog.text
    assert json.loads((second / "posinterp.json").read_text())["parent"]["factor"] == 2.0


@pytest.mark.parametrize("kwargs,match", [
    (dict(factor=1.0), "finite number > 1"),
    (dict(factor=0.5), "finite number > 1"),
    (dict(factor=float("nan")), "finite number > 1"),
    (dict(factor=float("inf")), "finite number > 1"),
    (dict(target_length=256), "larger than the original window 256"),
    (dict(), "give --factor"),
    (dict(factor=2, target_length=512), "not both"),
    (dict(factor=2, method="none"), "--method none"),
])
def test_refusals(tiny_dir, tmp_path, kwargs, match):
    src = tiny_dir()
    with pytest.raises(PosinterpError, match=match) as err:
        extend(str(src), out=tmp_path / "out", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and _no_temp_left(tmp_path)


def test_refuses_non_rope_naming_architecture(tiny_dir, tmp_path):
    with pytest.raises(PosinterpError, match="'gpt2' uses learned absolute positions"):
        extend(str(tiny_dir("gpt2")), factor=2, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existing", ["yarn", "llama3", "longrope", "dynamic"])
def test_refuses_existing_scaling(tiny_dir, tmp_path, existing):
    src = tiny_dir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": existing, "factor": 2.0, "rope_theta": 10000.0,
                              "original_max_position_embeddings": 128, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "short_factor": [1.0] * 8, "long_factor": [1.0] * 8}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PosinterpError, match=f"already uses {existing}"):
        extend(str(src), factor=2, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rope", [
    {"rope_parameters": {"rope_type": "foo", "factor": 2.0, "rope_theta": 10000.0}},
    {"rope_parameters": None, "rope_scaling": {"type": "foo", "factor": 2.0}, "rope_theta": 10000.0},
    {"rope_parameters": None, "rope_scaling": {"rope_type": "foo", "factor": 2.0}, "rope_theta": 10000.0},
], ids=["rope_parameters", "legacy-type", "legacy-rope_type"])
def test_refuses_unknown_rope_type_in_the_source(tiny_dir, tmp_path, rope):
    """A rope_type transformers does not know was replaced silently by PI's; now refused, nothing written."""
    src = tiny_dir()
    cfg = {k: v for k, v in json.loads((src / "config.json").read_text()).items() if k != "rope_parameters"}
    (src / "config.json").write_text(json.dumps({**cfg, **{k: v for k, v in rope.items() if v is not None}}))
    with pytest.raises(PosinterpError, match=r"rope_parameters\.rope_type \(rope_scaling\.type in older configs\) "
                                             r"is 'foo'.*known: default, .*linear, llama3") as err:
        extend(str(src), factor=2, out=tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and _no_temp_left(tmp_path)


def test_llama3_writes_transformers_llama3_and_keeps_high_frequencies(tiny_dir, tmp_path):
    """Llama 3.1's scaling at s = 2 from L = 256: the written model runs transformers' own llama3 frequencies (the
    same logits as the weights under a by-hand llama3 config). Unlike PI it keeps the high frequencies (wavelength
    under L/4) exactly as the source has them; the low ones move, so logits inside L are not the source's."""
    src = tiny_dir()
    out = extend(str(src), factor=2, method="llama3", out=tmp_path / "out")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 512 and cfg["rope_scaling"]["type"] == "llama3"
    loaded = tf.AutoModelForCausalLM.from_pretrained(out).eval()
    by_hand_cfg = tf.AutoConfig.from_pretrained(src)
    by_hand_cfg.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 2.0,
                                   "original_max_position_embeddings": 256, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0}
    by_hand_cfg.max_position_embeddings = 512
    by_hand = tf.AutoModelForCausalLM.from_pretrained(src, config=by_hand_cfg).eval()
    source = tf.AutoModelForCausalLM.from_pretrained(src).eval()
    new, old = loaded.model.rotary_emb.inv_freq, source.model.rotary_emb.inv_freq
    assert torch.equal(new[:3], old[:3]) and torch.allclose(new[4:], old[4:] / 2)  # wavelengths 6, 20, 63 < 64 kept
    ids = torch.randint(0, 1000, (1, 200))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, by_hand(ids).logits)
        assert not torch.allclose(loaded(ids).logits, source(ids).logits)
    prov = json.loads((out / "posinterp.json").read_text())
    assert prov["method"] == "llama3" and prov["rope_parameters"]["original_max_position_embeddings"] == 256


def test_unknown_window_needs_original_length(tiny_dir, tmp_path):
    src = tiny_dir()
    cfg = json.loads((src / "config.json").read_text())
    del cfg["max_position_embeddings"]
    (src / "config.json").write_text(json.dumps(cfg))
    # transformers fills a class default when the key is missing; --original-length states the truth
    out = extend(str(src), factor=2, original_length=300, out=tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 600
    with pytest.raises(PosinterpError, match="--original-length"):
        extend(str(src), factor=2, original_length=0, out=tmp_path / "o2")


def test_out_not_empty_refused_unless_force(tiny_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(PosinterpError, match="not empty.*--force"):
        extend(str(tiny_dir()), factor=2, out=out)
    assert (out / "keep.txt").is_file()
    extend(str(tiny_dir()), factor=2, out=out, force=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_failure_midway_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    from posinterp.model import export

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "write_legacy_keys", boom)
    with pytest.raises(RuntimeError):
        extend(str(tiny_dir()), factor=2, out=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_temp_left(tmp_path)


@pytest.mark.parametrize("method", ["ntk", "dynamic", "yarn", "llama3"])
def test_other_methods_same_path(tiny_dir, tmp_path, method):
    out = extend(str(tiny_dir()), factor=2, method=method, out=tmp_path / method)
    loaded = tf.AutoModelForCausalLM.from_pretrained(out)
    expected = {"ntk": "default", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3"}[method]
    assert loaded.config.rope_parameters["rope_type"] == expected
    assert json.loads((out / "posinterp.json").read_text())["method"] == method


def test_cli_one_line_error(tiny_dir, tmp_path, capsys):
    from posinterp.__main__ import main

    code = main(["extend", str(tiny_dir("gpt2")), "--factor", "2", "--out", str(tmp_path / "o")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("posinterp: error")]
    assert code == 2 and len(lines) == 1 and "'gpt2'" in lines[0]
