"""The `extend` verb: validate, configure the model's own RoPE parameters, write atomically.

    posinterp extend smollm2-135m --factor 4 --out runs/smollm2-32k
    posinterp extend ./my-llama --target-length 32768 --out ./my-llama-32k
    posinterp extend smollm2-135m --method yarn --factor 2 --out runs/smollm2-16k-yarn
    posinterp extend smollm2-135m --method llama3 --factor 4 --out runs/smollm2-32k-llama3

No weight changes: PI is `rope_type: linear` with `factor: s`, rope_theta kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from posinterp.atomic import check_out
from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError
from posinterp.model.rope import METHODS, RopeSpec, check_factor

log = logging.getLogger(__name__)


@dataclass
class ExtendConfig:
    model: str = arg(help="model: HF folder, cached hub id, .gguf file, or alias smollm2-135m", positional=True)
    out: Path = arg(help="output folder for the extended checkpoint")
    factor: float | None = arg(None, help="scale s = new window / original window (> 1)")
    target_length: int | None = arg(None, help="new window in tokens; alternative to --factor")
    method: str = arg("pi", help="rope method", choices=tuple(METHODS))
    original_length: int | None = arg(None, help="window the model was trained at (default: from its config)")
    dtype: str = arg("auto", help="weights dtype to save: auto (as loaded), float32, bfloat16, float16",
                     choices=("auto", "float32", "bfloat16", "float16"))
    force: bool = arg(False, help="replace a non-empty --out")

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.method == "none":
            others = [m for m in METHODS if m != "none"]
            raise PosinterpError(f"--method none writes an unchanged model; choose {', '.join(others[:-1])} "
                                 f"or {others[-1]}")
        if self.factor is None and self.target_length is None:
            raise PosinterpError("give --factor S (e.g. --factor 4) or --target-length N (e.g. --target-length 32768)")
        if self.factor is not None and self.target_length is not None:
            raise PosinterpError("give either --factor or --target-length, not both")
        if self.factor is not None:
            self.factor = check_factor(self.factor)


@dataclass
class Plan:
    """What `extend` will write, resolved before any weights are loaded."""

    ref: object
    config: object
    spec: RopeSpec
    original_length: int
    notes: list


def plan(cfg: ExtendConfig) -> Plan:
    """Resolve and validate everything that can be checked without loading weights."""
    from posinterp.model import loader

    check_out(cfg.out, cfg.force)
    prep = loader.prepare(cfg.model, original_length=cfg.original_length)
    ref, config, original = prep.ref, prep.config, prep.original_length
    if cfg.target_length is not None:
        if int(cfg.target_length) <= original:
            raise PosinterpError(f"--target-length {cfg.target_length} must be larger than the original window "
                                 f"{original}; e.g. --target-length {2 * original}")
        factor = int(cfg.target_length) / original
    else:
        factor = cfg.factor
    spec = RopeSpec(cfg.method, factor)
    notes = []
    from posinterp.model.rope import configure

    info = configure(config, spec, original)  # raises for refused existing scalings
    if info.get("composed_with"):
        notes.append(f"the model already uses linear scaling ×{info['composed_with']:g}; factors multiply: "
                     f"{info['composed_with']:g} × {factor:g} = {info['total_factor']:g}")
    return Plan(ref, config, spec, original, notes)


def extend(cfg: ExtendConfig | str | None = None, **kwargs) -> Path:
    """Write the extended checkpoint to `cfg.out` and return its path.

    `extend(ExtendConfig(...))` or `extend("smollm2-135m", factor=4, out="runs/x")`.
    """
    import torch

    from posinterp.model import facts, loader, refs
    from posinterp.model.export import read_provenance, save_checkpoint

    cfg = as_config(ExtendConfig, cfg, kwargs)
    p = plan(cfg)
    for note in p.notes:
        log.info("note: %s", note)
    ref = refs.dense(p.ref)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    source_config = facts.load_config(ref)
    dtype = dtypes.get(cfg.dtype) or getattr(source_config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = dtypes.get(dtype, torch.float32)
    model, info = loader.load_model(ref, rope=p.spec, original_length=p.original_length, dtype=dtype)
    tokenizer = refs.load_tokenizer(ref)
    parent = read_provenance(ref.folder)
    provenance = {
        "source": str(cfg.model),
        "source_files": str(ref.folder),
        "source_gguf": p.ref.gguf_file,
        "original_length": p.original_length,
        "target_length": info["target_length"],
        "factor": p.spec.factor,
        "method": p.spec.method,
        "rope_parameters": info.get("rope_parameters"),
        "composed_with": info.get("composed_with"),
        "notes": p.notes,
        "parent": parent,
    }
    out = save_checkpoint(model, tokenizer, cfg.out, provenance, force=cfg.force)
    log.info("wrote %s: %s ×%g, window %d → %d (rope %s)", out, p.spec.method, p.spec.factor,
             p.original_length, info["target_length"], info.get("rope_parameters"))
    return out
