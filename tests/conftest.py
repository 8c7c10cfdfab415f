"""Shared fixtures: tiny random models saved as ordinary HF folders, and the embedded tokenizer."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

# the suite never writes the user's probe cache: a busy test run would cache a wrong precision verdict;
# the temporary folder goes when the session ends
if not os.environ.get("POSINTERP_PROBE_CACHE"):
    _probe_dir = tempfile.mkdtemp(prefix="posinterp-probe-")
    atexit.register(shutil.rmtree, _probe_dir, ignore_errors=True)
    os.environ["POSINTERP_PROBE_CACHE"] = str(Path(_probe_dir) / "probe.json")


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real tokenizer (from the embedded package), for tiny models that need real text."""
    from posinterp.model import refs

    return refs.load_tokenizer(refs.resolve("smollm2-135m"))


def make_tiny(kind: str = "llama", *, window: int = 256, vocab: int = 49152, seed: int = 0, **overrides):
    """A tiny random causal LM of the given architecture (2 layers, hidden 64)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, max_position_embeddings=window, num_hidden_layers=2)
    if kind == "llama":
        cfg = tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                             tie_word_embeddings=True, **common)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **common)
    elif kind == "mistral":
        cfg = tf.MistralConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **common)
    elif kind == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               rotary_pct=0.25, **common)
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=window, vocab_size=vocab)
    else:
        raise ValueError(kind)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model


def save_tiny(folder: Path, tokenizer, kind: str = "llama", model=None, **kw) -> Path:
    """Save a tiny model (`model`, or a new `make_tiny(kind, **kw)`) with `tokenizer` into `folder`."""
    model = model if model is not None else make_tiny(kind, **kw)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_dir(tmp_path: Path, smol_tokenizer):
    """Factory: save a tiny model (with SmolLM2's tokenizer) into a folder and return the path."""

    def _make(kind: str = "llama", name: str | None = None, **kw) -> Path:
        return save_tiny(tmp_path / (name or f"tiny-{kind}"), smol_tokenizer, kind, **kw)

    return _make


@pytest.fixture(scope="module")
def one_thread():
    """One OpenMP thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`), in this process
    (train's `set_threads` reads OMP_NUM_THREADS) and in the subprocesses it starts: the same reduction order,
    so bit-equal weights can be asked for; and tiny models on a busy 2-core machine run ~10× slower with two
    OpenMP threads fighting for the cores."""
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env
