"""Write a standard extended checkpoint that every reader sees the same way.

Where each reader takes the window from, and what we write for it:

| reader                  | reads                                                   | we write                    |
| ----------------------- | ------------------------------------------------------- | --------------------------- |
| transformers 5          | `rope_parameters`; window = `max_position_embeddings`   | rope_parameters, mpe = L'   |
| transformers 4.x        | `rope_scaling` + top-level `rope_theta`                 | both, equal to the above    |
| lm-eval (HFLM)          | `max_length` ← `max_position_embeddings`                | L'                          |
| vLLM                    | max_model_len = mpe × factor, capped by tokenizer `model_max_length` | tokenizer model_max_length = L' |
| llama.cpp converter     | `context_length` ← mpe, `rope.scaling.*` ← rope_scaling | L', linear, factor          |
|                         | llama3: bakes the per-frequency factors into `rope_freqs` | (the llama3 rope_scaling)   |

So `max_position_embeddings` is the new window L' (dynamic NTK excepted: transformers reads it as
the pre-scaling window), and the tokenizer's `model_max_length` = L' caps vLLM's product at L'.

The tokenizer config names a class both transformers lines know: 5.x saves its generic fast
tokenizer as `TokenizersBackend`, which 4.x's `AutoTokenizer` refuses ("does not exist"); we write
`PreTrainedTokenizerFast`, which 4.x loads from tokenizer.json and 5.x aliases to the same class.
tests/model/test_transformers4.py loads these checkpoints in 4.x; `posinterp export gguf` (gguf_export.py)
runs llama.cpp's converter on them and checks the keys it writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posinterp.atomic import atomic_dir, write_json
from posinterp.model.rope import window, write_legacy_keys
from posinterp.versions import versions

PROVENANCE = "posinterp.json"
PORTABLE_TOKENIZER_CLASS = {"TokenizersBackend": "PreTrainedTokenizerFast"}
"""transformers 5-only generic tokenizer class → the name that 4.x (≥ 4.40) and 5.x both load."""


def save_checkpoint(model: Any, tokenizer: Any, out: Path | str, provenance: dict, *, force: bool = False,
                    extra_files: dict[str, Any] | None = None) -> Path:
    """Save weights (safetensors), tokenizer, generation config and `posinterp.json`, atomically."""
    out = Path(out)
    with atomic_dir(out, force=force) as tmp:
        write_into(model, tokenizer, tmp, provenance)
        for name, data in (extra_files or {}).items():
            write_json(tmp / name, data)
    return out


def write_into(model: Any, tokenizer: Any, folder: Path, provenance: dict) -> None:
    """The checkpoint files, into an existing (temporary) folder."""
    folder = Path(folder)
    if getattr(model, "generation_config", None) is not None:
        # a sampled generation config is fine to keep; a max_length below the window is not
        gen = model.generation_config
        if getattr(gen, "max_length", None) and gen.max_length < window(model.config):
            gen.max_length = window(model.config)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        write_tokenizer(tokenizer, folder, window(model.config))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    write_legacy_keys(config)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_json(folder / PROVENANCE, {**provenance, "versions": versions()})


def write_tokenizer(tokenizer: Any, folder: Path, max_length: int) -> None:
    """Save the tokenizer with `model_max_length` = the window, under a class name every reader knows."""
    folder = Path(folder)
    tokenizer.model_max_length = int(max_length)
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    name = config.get("tokenizer_class")
    # only a tokenizer saved as tokenizer.json can be read by the generic fast class
    if name in PORTABLE_TOKENIZER_CLASS and (folder / "tokenizer.json").is_file():
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS[name]
    config["model_max_length"] = int(max_length)
    template = folder / "chat_template.jinja"
    if template.is_file() and "chat_template" not in config:
        config["chat_template"] = template.read_text()  # 4.45, for one, reads only this key
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    _portable_merges(folder / "tokenizer.json")


def _portable_merges(path: Path) -> None:
    """BPE merges as "a b" strings, the form every `tokenizers` reads (0.19, under transformers 4.40–4.44, reads no other).

    tokenizers ≥ 0.20 saves them as [a, b] pairs so that a token may hold a space; when none does
    (byte-level BPE writes a space as Ġ), the string form is the same merges.
    """
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or not all(isinstance(m, list) and len(m) == 2 for m in merges):
        return
    if any(" " in part for pair in merges for part in pair):
        return
    model["merges"] = [f"{a} {b}" for a, b in merges]
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_provenance(folder: Path | str) -> dict | None:
    path = Path(folder) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None
