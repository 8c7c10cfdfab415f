"""`export gguf`: llama.cpp's own converter on tiny extended models, its keys read back and checked.

The converter comes from the llama-cpp-python sdist, fetched once into the cache (37 s cold, a 76 MB
download, 2.6 MB kept); each conversion of a tiny model takes 9–17 s (the converter imports torch and
transformers).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

from posinterp.errors import PosinterpError
from posinterp.model import gguf
from posinterp.model.extend import extend
from posinterp.model.gguf import GgufExportConfig, export_gguf, read_keys

THETA = 50000.0


def _no_temp_left(parent):
    return not [p for p in parent.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def converter():
    try:
        return gguf.converter()
    except PosinterpError as err:
        pytest.skip(f"llama.cpp's converter could not be fetched: {err}")


@pytest.fixture(scope="module")
def extended(tmp_path_factory, smol_tokenizer):
    """method → a tiny extended checkpoint (window 256 → 512, θ = 50000), made once per module."""
    from conftest import make_tiny

    root = tmp_path_factory.mktemp("gguf")
    src = root / "src"
    make_tiny("llama", rope_parameters={"rope_type": "default", "rope_theta": THETA}).save_pretrained(src)
    smol_tokenizer.save_pretrained(src)
    made = {}

    def get(method: str, factor: float = 2):
        key = f"{method}-{factor:g}"
        if key not in made:
            made[key] = extend(str(src), factor=factor, method=method, out=root / key)
        return made[key]

    return get


@pytest.fixture(scope="module")
def pi_gguf(converter, extended, tmp_path_factory):
    """The PI ×2 checkpoint converted once: (path, export_gguf's result)."""
    out = tmp_path_factory.mktemp("pi-gguf") / "pi.gguf"
    return out, export_gguf(str(extended("pi")), out=out)


def _copy_of(path):
    """A stand-in converter that writes a given GGUF (a converter gone wrong)."""
    return lambda script, checkpoint, outfile, outtype: shutil.copy(path, outfile)


@pytest.mark.parametrize("method,outtype,scaling,file_type", [
    ("pi", "f16", {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}, 1),
    ("yarn", "q8_0", {"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 2.0,
                      "llama.rope.scaling.original_context_length": 256}, 7),
    ("ntk", "f16", {}, 1),  # static NTK is only a new base: freq_base carries it
    ("llama3", "f16", {}, 1),  # no GGUF scaling type: per-frequency divisors in the rope_freqs tensor
])
def test_export_keys_match_the_checkpoint(extended, pi_gguf, tmp_path, method, outtype, scaling, file_type):
    ckpt = extended(method)
    theta = json.loads((ckpt / "config.json").read_text())["rope_parameters"]["rope_theta"]
    if method == "pi":
        out, result = pi_gguf
    else:
        out = tmp_path / "gguf" / f"{method}.gguf"
        result = export_gguf(str(ckpt), out=out, outtype=outtype)
    assert out.is_file() and result["out"] == str(out) and _no_temp_left(out.parent)
    keys = result["keys"]
    assert keys["general.architecture"] == "llama" and keys["general.file_type"] == file_type
    assert keys["llama.context_length"] == 512
    assert keys["llama.rope.freq_base"] == pytest.approx(theta, rel=1e-6)
    assert {k: v for k, v in keys.items() if "scaling" in k and v is not None} == scaling
    again = read_keys(out)  # the file itself, read again
    assert again["context_length"] == 512 and again["rope.scaling.type"] == scaling.get("llama.rope.scaling.type")
    if method == "ntk":
        assert theta > THETA  # the NTK base, not the original θ
    if method == "llama3":
        # d = 16, θ = 5e4, L = 256: wavelengths 2π·θ^(j/8) = 6.3, 24, 94, 363, ...: under L/4 = 64 kept (1),
        # over L interpolated (s = 2), 94 in the band: 1 / ((1 − r)/s + r) with r = (L/λ − 1)/(4 − 1)
        r = (256 / (2 * math.pi * THETA ** (4 / 16)) - 1) / 3
        divisors = [1.0, 1.0, 1 / ((1 - r) / 2 + r)] + [2.0] * 5
        assert keys["rope_freqs.weight"] == pytest.approx(divisors, rel=1e-6) == again["rope_freqs.weight"]
    else:
        assert "rope_freqs.weight" not in keys and again["rope_freqs.weight"] is None


def test_dynamic_refused_before_conversion(extended, tmp_path, monkeypatch):
    ckpt = extended("dynamic")
    monkeypatch.setattr(gguf, "converter", lambda *a, **k: pytest.fail("fetched the converter"))
    with pytest.raises(PosinterpError, match="dynamic NTK.*llama.cpp cannot express") as err:
        export_gguf(GgufExportConfig(checkpoint=ckpt, out=tmp_path / "d.gguf"))
    assert "\n" not in str(err.value) and not (tmp_path / "d.gguf").exists()


@pytest.mark.parametrize("method,factor,match", [
    ("yarn", 2, "llama.rope.scaling.type 'linear' ≠ 'yarn'"),
    ("pi", 4, "llama.context_length 512 ≠ 1024; .*llama.rope.scaling.factor 2.0 ≠ 4.0"),
    # a converter that writes llama3 as no scaling at all (what its non-Llama architectures do): plain RoPE at L'
    ("llama3", 2, "llama.rope.scaling.type 'linear' ≠ None; .*tensor rope_freqs.weight absent ≠ llama3's "
                  r"\[1, 1, 1.27, 2, 2, 2, 2, 2\]"),
])
def test_disagreeing_gguf_refused_and_removed(extended, pi_gguf, tmp_path, monkeypatch, method, factor, match):
    """A converter that writes other keys than the checkpoint says (here: the PI ×2 file) is caught."""
    monkeypatch.setattr(gguf, "_convert", _copy_of(pi_gguf[0]))
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(PosinterpError, match="disagrees with .*config.json: " + match) as err:
        export_gguf(str(extended(method, factor)), out=out)
    assert "\n" not in str(err.value) and str(err.value).endswith("nothing written")
    assert not out.exists() and _no_temp_left(out.parent)


def test_out_exists_needs_force(extended, pi_gguf, tmp_path, monkeypatch):
    out = tmp_path / "exists.gguf"
    out.write_text("keep")
    with pytest.raises(PosinterpError, match="exists; choose another path or pass --force"):
        export_gguf(str(extended("pi")), out=out)
    assert out.read_text() == "keep"
    monkeypatch.setattr(gguf, "_convert", _copy_of(pi_gguf[0]))
    export_gguf(str(extended("pi")), out=out, force=True)
    assert read_keys(out)["context_length"] == 512 and _no_temp_left(tmp_path)


def test_bad_inputs_one_line(tiny_dir, extended, tmp_path, monkeypatch):
    """Each refused before the converter is fetched, in one line."""
    monkeypatch.setattr(gguf, "converter", lambda *a, **k: pytest.fail("fetched the converter"))
    out = tmp_path / "o.gguf"
    ckpt = extended("pi")
    no_weights = shutil.copytree(ckpt, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    no_tokenizer = shutil.copytree(ckpt, tmp_path / "no-tok", ignore=shutil.ignore_patterns("tokenizer*"))
    not_hf = tmp_path / "not-hf"
    not_hf.mkdir()
    (not_hf / "notes.txt").write_text("x")
    a_gguf = tmp_path / "m.gguf"
    a_gguf.write_bytes(b"GGUF")
    damaged = shutil.copytree(ckpt, tmp_path / "damaged")
    (damaged / "config.json").write_text("{not json")
    cases = [
        (tmp_path / "missing", out, "does not exist"),
        (not_hf, out, "no config.json: not a Hugging Face checkpoint"),
        (a_gguf, out, "is already a GGUF"),
        (no_weights, out, "has no weights"),
        (no_tokenizer, out, "no tokenizer.json"),
        (damaged, out, "config.json is not readable JSON"),
        (ckpt, tmp_path, "is a folder"),
        (tiny_dir("gpt2"), out, "'gpt2' uses learned absolute positions"),
    ]
    for checkpoint, where, match in cases:
        with pytest.raises(PosinterpError, match=match) as err:
            export_gguf(str(checkpoint), out=where)
        assert "\n" not in str(err.value)
    assert not out.exists()
    with pytest.raises(PosinterpError, match="--outtype 'q4'"):
        GgufExportConfig(checkpoint=ckpt, out=out, outtype="q4")


def test_cli(extended, tmp_path, monkeypatch, capsys):
    from posinterp.__main__ import main

    monkeypatch.setattr(gguf, "converter", lambda *a, **k: pytest.fail("fetched the converter"))
    code = main(["export", "gguf", str(tmp_path / "nope"), "--out", str(tmp_path / "x.gguf")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("posinterp: error")]
    assert code == 2 and len(lines) == 1 and "does not exist" in lines[0]
    code = main(["export", "gguf", str(extended("dynamic")), "--out", str(tmp_path / "x.gguf"), "--outtype", "q8_0"])
    assert code == 2 and "dynamic NTK" in capsys.readouterr().err


def _llama_perplexity():
    """The llama-perplexity that experiments/llama_cpp_perplexity.py builds (or $POSINTERP_LLAMA_PERPLEXITY)."""
    import os
    from pathlib import Path

    from posinterp.cache import cache_dir

    env = os.environ.get("POSINTERP_LLAMA_PERPLEXITY")
    path = Path(env) if env else cache_dir() / "llama.cpp" / f"build-{gguf.LLAMA_CPP_VERSION}" / "bin" / "llama-perplexity"
    if not path.is_file():
        pytest.skip(f"llama-perplexity is not built ({path}); experiments/llama_cpp_perplexity.py builds it "
                    "(398 s on one core here, so not in make setup)")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pi", "yarn", "llama3"])
def test_llama_cpp_scores_the_gguf_as_eval_ppl_does(extended, converter, tmp_path, smol_tokenizer, method):
    """llama.cpp's own perplexity tool on the exported GGUF (f32) against `posinterp eval ppl` on the checkpoint,
    on the same 2048 tokens, window 512 (the new one) and stride 256: the same tokens scored, within 0.1%."""
    import sys
    from pathlib import Path

    binary = _llama_perplexity()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
    import llama_cpp_perplexity as check

    ckpt = extended(method)
    gguf = tmp_path / f"{method}.gguf"
    export_gguf(str(ckpt), out=gguf, outtype="f32")
    text = tmp_path / "text.txt"
    tokens = 2048
    check.held_out_text("smollm2-135m", tokens, text)
    ours = check.posinterp_ppl(ckpt, text, 512, 256, tokens)
    theirs = check.llama_ppl(binary, gguf, text, 512, 256, threads=2)
    print(f"{method}: posinterp {ours['perplexity']:.4f} on {ours['tokens_scored']} tokens, "
          f"llama.cpp {theirs['perplexity']:.4f} on {theirs['tokens_scored']}")
    # no BOS added; llama-perplexity drops a final newline of the file (common/arg.cpp), after the scored tokens
    assert theirs["tokens_in_file"] == tokens - text.read_text().endswith("\n")
    assert theirs["tokens_scored"] == ours["tokens_scored"] == tokens - 512
    assert theirs["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-3)
