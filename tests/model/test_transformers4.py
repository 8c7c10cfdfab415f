"""transformers 4.x reads our checkpoints as 5.x does: config, tokenizer, and logits within 1e-5.

Runs a side environment (posinterp.compat_env: a venv with transformers 4.57.6 and this torch,
built once — 72–90 s here — then cached) on tiny extended checkpoints. Two damaged copies show
the check can fail: 5.x's own tokenizer class name, and a config without the legacy rope keys.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file

from posinterp import compat_env
from posinterp.model.extend import extend

pytestmark = pytest.mark.compat

TEXT = "Hello <|im_start|>user\nthe passkey is 42<|im_end|>  spaces\tand ünïcode"
THETA = 50000.0  # not the 4.x LlamaConfig default (10000): a dropped rope_theta shows


@pytest.fixture(scope="module")
def side_python():
    try:
        return compat_env.side_env()
    except compat_env.SideEnvUnavailable as err:
        pytest.skip(f"transformers {compat_env.TRANSFORMERS4} side environment unavailable: {err}")


def _five(folder, ids):
    """What transformers 5 sees: (tokenizer, logits)."""
    tok = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return tok, model(torch.tensor([ids])).logits[0]


def test_transformers4_reads_extended_checkpoints(tiny_dir, tmp_path, side_python):
    src = tiny_dir("llama", rope_parameters={"rope_type": "default", "rope_theta": THETA})
    pi = extend(str(src), factor=2, out=tmp_path / "pi")
    yarn = extend(str(src), factor=2, method="yarn", out=tmp_path / "yarn")
    llama3 = extend(str(src), factor=2, method="llama3", out=tmp_path / "llama3")
    qwen = extend(str(tiny_dir("qwen2")), factor=2, out=tmp_path / "qwen2")  # keeps its own tokenizer class
    # damaged copies: 5.x's tokenizer class name; a v5-only config (no rope_scaling, no top-level rope_theta)
    bad_tok = shutil.copytree(pi, tmp_path / "bad-tokenizer")
    tok_cfg = json.loads((bad_tok / "tokenizer_config.json").read_text())
    (bad_tok / "tokenizer_config.json").write_text(json.dumps({**tok_cfg, "tokenizer_class": "TokenizersBackend"}))
    v5_only = shutil.copytree(pi, tmp_path / "v5-only")
    cfg = json.loads((v5_only / "config.json").read_text())
    del cfg["rope_scaling"], cfg["rope_theta"]
    (v5_only / "config.json").write_text(json.dumps(cfg))

    ids = torch.randint(0, 49152, (500,), generator=torch.Generator().manual_seed(0)).tolist()  # > original 256
    report = compat_env.probe(side_python, [pi, yarn, llama3, qwen, bad_tok, v5_only], ids, TEXT, tmp_path / "probe")
    assert report["transformers"] == compat_env.TRANSFORMERS4 and report["torch"] == torch.__version__
    seen = dict(zip(["pi", "yarn", "llama3", "qwen2", "bad_tok", "v5_only"], report["checkpoints"]))

    expected_scaling = {"pi": ("linear", None), "yarn": ("yarn", 256), "llama3": ("llama3", 256),
                        "qwen2": ("linear", None)}
    for name, folder in [("pi", pi), ("yarn", yarn), ("llama3", llama3), ("qwen2", qwen)]:
        entry = seen[name]
        assert not {"config_error", "tokenizer_error", "model_error"} & set(entry), entry
        config = entry["config"]
        rope_type, original = expected_scaling[name]
        scaling = config["rope_scaling"]
        assert (scaling.get("type") or scaling.get("rope_type")) == rope_type and scaling["factor"] == 2.0, name
        assert scaling.get("original_max_position_embeddings") == original, name
        if name == "llama3":  # Llama 3.1's band edges, read by 4.x as written
            assert (scaling["low_freq_factor"], scaling["high_freq_factor"]) == (1.0, 4.0)
        assert config["rope_theta"] == json.loads((folder / "config.json").read_text())["rope_parameters"]["rope_theta"]
        assert config["max_position_embeddings"] == 512
        tok5, logits5 = _five(folder, ids)
        assert entry["tokenizer"]["model_max_length"] == 512 == tok5.model_max_length
        assert entry["tokenizer"]["ids"] == tok5(TEXT).input_ids
        assert entry["tokenizer"]["special"] == [tok5.bos_token, tok5.eos_token, tok5.pad_token, tok5.unk_token]
        assert entry["tokenizer"]["chat"] == tok5.apply_chat_template([{"role": "user", "content": TEXT}],
                                                                      tokenize=False)
        logits4 = load_file(entry["logits"])["logits"]
        delta = (logits4 - logits5).abs().max().item()
        print(f"{name}: max |Δ logits| transformers {report['transformers']} vs 5.x = {delta:.3g}")  # pytest -s
        assert delta <= 1e-5, f"{name}: max |Δ logits| 4.x vs 5.x = {delta:.3g}"
    assert seen["pi"]["config"]["rope_theta"] == THETA

    # the check can fail: 4.x refuses 5.x's class name, and runs a v5-only config unscaled
    assert "TokenizersBackend" in seen["bad_tok"]["tokenizer_error"]
    assert seen["v5_only"]["config"]["rope_scaling"] is None and seen["v5_only"]["config"]["rope_theta"] != THETA
    _, logits5 = _five(pi, ids)
    assert (load_file(seen["v5_only"]["logits"])["logits"] - logits5).abs().max().item() > 1e-3
