"""PI and the other methods are checked against transformers' own rope functions."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from posinterp.errors import PosinterpError
from posinterp.model.rope import (
    METHODS,
    RopeSpec,
    check_rope_type,
    configure,
    parse_rope,
    window,
    write_legacy_keys,
)


def _rotary(model):
    return model.model.rotary_emb


def _cos_sin(model, positions: torch.Tensor):
    x = torch.zeros(1, positions.shape[-1], 8)
    return _rotary(model)(x, positions[None].float())


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("factor", [2.0, 4.0, 2.5])
def test_pi_cos_sin_equal_original_at_m_over_s(kind, factor):
    original = make_tiny(kind, window=256)
    config = original.config.__class__.from_dict(original.config.to_dict())
    configure(config, RopeSpec("pi", factor), original_length=256)
    import transformers as tf

    extended = tf.AutoModelForCausalLM.from_config(config)
    m = torch.tensor([0.0, 1.0, 3.5, 17.25, 255.0, 511.0, 1000.0])  # fractional m included
    cos_e, sin_e = _cos_sin(extended, m)
    cos_o, sin_o = _cos_sin(original, m / factor)
    # float32 angles up to ~1000 rad: m·(θ/s) and (m/s)·θ round differently by ~1e-5
    torch.testing.assert_close(cos_e, cos_o, rtol=0, atol=2e-5)
    torch.testing.assert_close(sin_e, sin_o, rtol=0, atol=2e-5)
    assert config.rope_parameters["rope_theta"] == original.config.rope_parameters["rope_theta"]
    assert config.max_position_embeddings == int(256 * factor)


def test_pi_inv_freq_is_transformers_linear_function():
    model = make_tiny("llama")
    config = model.config
    configure(config, RopeSpec("pi", 4.0), 256)
    inv, scale = ROPE_INIT_FUNCTIONS["linear"](config, "cpu")
    base = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    torch.testing.assert_close(inv, base / 4.0)
    assert scale == 1.0


def test_partial_rotary_neox_keeps_partial_factor():
    model = make_tiny("gpt_neox")
    info = configure(model.config, RopeSpec("pi", 2.0), 256)
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert info["rope_type"] == "linear"


def test_method_table_maps_to_transformers_rope_types():
    assert METHODS == {"none": "default", "pi": "linear", "ntk": "default", "dynamic": "dynamic", "yarn": "yarn",
                       "llama3": "llama3"}
    for rope_type in set(METHODS.values()):
        assert rope_type in ROPE_INIT_FUNCTIONS or rope_type == "default"


def test_each_method_configures_and_runs():
    for method in METHODS:
        model = make_tiny("llama", window=64)
        spec = RopeSpec(method, 1.0 if method == "none" else 2.0)
        configure(model.config, spec, 64)
        import transformers as tf

        net = tf.AutoModelForCausalLM.from_config(model.config)
        out = net(torch.randint(0, 100, (1, 150))).logits
        assert torch.isfinite(out).all(), method
        params = model.config.rope_parameters
        if method == "ntk":
            d = 16
            assert params["rope_theta"] == pytest.approx(10000.0 * 2.0 ** (d / (d - 2)))
        if method in ("yarn", "llama3"):
            assert params["original_max_position_embeddings"] == 64 and model.config.max_position_embeddings == 128
        if method == "llama3":
            assert (params["low_freq_factor"], params["high_freq_factor"]) == (1.0, 4.0)  # Llama 3.1's
        if method == "dynamic":
            assert model.config.max_position_embeddings == 64 and window(model.config) == 128


def test_linear_composes_and_others_refused():
    model = make_tiny("llama", window=512)
    model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    info = configure(model.config, RopeSpec("pi", 2.0), 512)
    assert info["composed_with"] == 2.0 and model.config.rope_parameters["factor"] == 4.0
    for existing in ("yarn", "llama3", "longrope", "dynamic"):
        m = make_tiny("llama")
        m.config.rope_parameters = {"rope_type": existing, "factor": 2.0, "rope_theta": 10000.0}
        with pytest.raises(PosinterpError, match=existing):
            configure(m.config, RopeSpec("pi", 2.0), 256)


@pytest.mark.parametrize("text,expected", [("none", RopeSpec("none", 1.0)), ("pi:2", RopeSpec("pi", 2.0)),
                                           ("yarn:4", RopeSpec("yarn", 4.0)), ("ntk:1.5", RopeSpec("ntk", 1.5)),
                                           ("llama3:8", RopeSpec("llama3", 8.0))])
def test_parse_rope(text, expected):
    assert parse_rope(text) == expected


@pytest.mark.parametrize("bad", ["pi", "pi:x", "pi:0.5", "pi:1", "pi:nan", "pi:inf", "alibi:2", "none:2"])
def test_parse_rope_refuses(bad):
    with pytest.raises(PosinterpError) as err:
        parse_rope(bad)
    assert "\n" not in str(err.value)


def test_legacy_keys_agree_and_alone_give_the_same_rope(tmp_path):
    """A config carrying only the legacy keys (what transformers 4.x reads) means the same rope."""
    import transformers as tf

    model = make_tiny("llama")
    configure(model.config, RopeSpec("pi", 4.0), 256)
    d = write_legacy_keys(model.config.to_dict())
    assert d["rope_scaling"] == {"type": "linear", "factor": 4.0}  # exactly the two keys 4.40–4.44 accept
    assert d["rope_theta"] == 10000.0
    legacy_only = {k: v for k, v in d.items() if k != "rope_parameters"}
    (tmp_path / "config.json").write_text(json.dumps(legacy_only))
    reread = tf.AutoConfig.from_pretrained(tmp_path)
    assert reread.rope_parameters["rope_type"] == "linear"
    assert reread.rope_parameters["factor"] == 4.0
    assert reread.rope_parameters["rope_theta"] == 10000.0


def test_llama3_inv_freq_is_transformers_function_and_keeps_high_frequencies():
    """Window 256, d = 16, θ = 1e4: wavelengths 2π·1e4^(j/8) = 6.3, 19.9, 62.8 (under L/4 = 64: kept), 199
    (the band: between θ_j and θ_j/s), 628 … 19869 (over L = 256: θ_j / s, as PI)."""
    model = make_tiny("llama")
    configure(model.config, RopeSpec("llama3", 4.0), 256)
    assert model.config.rope_parameters == {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0,
                                            "original_max_position_embeddings": 256, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0}
    assert model.config.max_position_embeddings == 1024
    inv, scale = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    base = 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float32) / 16)
    torch.testing.assert_close(inv[:3], base[:3])
    torch.testing.assert_close(inv[4:], base[4:] / 4.0)
    smooth = (256 * base[3] / (2 * torch.pi) - 1.0) / (4.0 - 1.0)  # periods in L, between the band's edges
    torch.testing.assert_close(inv[3], (1 - smooth) * base[3] / 4.0 + smooth * base[3])
    assert base[3] / 4.0 < inv[3] < base[3] and scale == 1.0
    import transformers as tf

    # the model's own rotary module runs these frequencies
    torch.testing.assert_close(_rotary(tf.AutoModelForCausalLM.from_config(model.config)).inv_freq, inv)


def test_llama3_legacy_keys_alone_give_the_same_rope(tmp_path):
    """transformers 4.x reads llama3 from rope_scaling (type, factor, original window, both band factors)."""
    import transformers as tf

    model = make_tiny("llama")
    configure(model.config, RopeSpec("llama3", 2.0), 256)
    d = write_legacy_keys(model.config.to_dict())
    assert d["rope_scaling"] == {"type": "llama3", "rope_type": "llama3", "factor": 2.0,
                                 "original_max_position_embeddings": 256, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in d.items() if k != "rope_parameters"}))
    reread = tf.AutoConfig.from_pretrained(tmp_path)
    torch.testing.assert_close(ROPE_INIT_FUNCTIONS["llama3"](reread, "cpu")[0],
                               ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")[0])


@pytest.mark.parametrize("method", ["none", "pi", "llama3"])
def test_unknown_rope_type_refused_naming_the_key_and_the_known_types(method):
    """A rope_type transformers has no function for would be replaced silently (or fail deep in loading)."""
    model = make_tiny("llama")
    model.config.rope_parameters = {"rope_type": "foo", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(PosinterpError, match=r"rope_parameters\.rope_type .*'foo'.*known: default, .*llama3") as err:
        configure(model.config, RopeSpec(method, 1.0 if method == "none" else 2.0), 256)
    assert "\n" not in str(err.value)
    assert model.config.rope_parameters["rope_type"] == "foo"  # untouched


def test_known_rope_types_pass():
    for rope_type in ["default", *ROPE_INIT_FUNCTIONS]:
        model = make_tiny("llama")
        model.config.rope_parameters = {"rope_type": rope_type, "rope_theta": 10000.0}
        assert check_rope_type(model.config) == rope_type
