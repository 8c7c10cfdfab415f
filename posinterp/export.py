"""Write a standard extended checkpoint that every reader sees the same way.

Where each reader takes the window from, and what we write for it:

| reader                  | reads                                                   | we write                    |
| ----------------------- | ------------------------------------------------------- | --------------------------- |
| transformers 5          | `rope_parameters`; window = `max_position_embeddings`   | rope_parameters, mpe = L'   |
| transformers 4.x        | `rope_scaling` + top-level `rope_theta`                 | both, equal to the above    |
| lm-eval (HFLM)          | `max_length` ← `max_position_embeddings`                | L'                          |
| vLLM                    | max_model_len = mpe × factor, capped by tokenizer `model_max_length` | tokenizer model_max_length = L' |
| llama.cpp converter     | `context_length` ← mpe, `rope.scaling.*` ← rope_scaling | L', linear, factor          |

So `max_position_embeddings` is the new window L' (dynamic NTK excepted: transformers reads it as
the pre-scaling window), and the tokenizer's `model_max_length` = L' caps vLLM's product at L'.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from posinterp.atomic import atomic_dir, write_json
from posinterp.rope import window, write_legacy_keys
from posinterp.versions import versions

PROVENANCE = "posinterp.json"


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
        tokenizer.model_max_length = window(model.config)
        tokenizer.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    write_legacy_keys(config)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_json(folder / PROVENANCE, {**provenance, "versions": versions()})


def read_provenance(folder: Path | str) -> dict | None:
    path = Path(folder) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None
