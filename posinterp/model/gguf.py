"""`export gguf`: a GGUF written by llama.cpp's own converter, its window and rope keys checked.

    posinterp export gguf runs/smollm2-16k --out smollm2-16k.gguf
    posinterp export gguf runs/smollm2-16k-yarn --out smollm2-16k-yarn-q8.gguf --outtype q8_0
    posinterp export gguf runs/smollm2-32k-llama3 --out smollm2-32k-llama3.gguf

The converter is llama.cpp's `convert_hf_to_gguf.py` from the llama-cpp-python sdist (pinned below),
fetched once with `pip download --no-deps --no-binary :all:` (a registry, not a hub; nothing is
compiled) and unpacked under `<cache>/llama.cpp/`: the script, its `conversion` package, its own
`gguf-py` and its chat templates. It runs in a subprocess of this Python (its torch and
transformers) with that `gguf-py` first on the path: the installed `gguf` release lacks what the
converter calls (e.g. `LazyChunkedTensor`).

The GGUF is written beside `--out` under a temporary name, read back with the `gguf` package and
renamed into place only if llama.cpp will run it as the checkpoint's config says:

| GGUF key                                    | must equal                                       |
| ------------------------------------------- | ------------------------------------------------ |
| `{arch}.context_length`                     | `max_position_embeddings` (the new window)       |
| `{arch}.rope.freq_base`                     | `rope_theta` (stored as float32)                 |
| `{arch}.rope.scaling.type`                  | `linear` (pi), `yarn`; absent for none, ntk, llama3 |
| `{arch}.rope.scaling.factor`                | the factor (pi, yarn)                            |
| `{arch}.rope.scaling.original_context_length` | yarn's `original_max_position_embeddings`      |
| tensor `rope_freqs.weight` (llama3 only)    | θ_j / θ'_j per frequency, from transformers' own llama3 function |
| `general.file_type`                         | `--outtype`                                      |

llama3 has no GGUF scaling type: the converter bakes its per-frequency divisors into a `rope_freqs`
tensor, which llama.cpp's runtime divides each frequency by. Only some of its architectures write it
(Llama's among them, always over the full head dim): any other gives a GGUF without the tensor, and a
partial rotary dim gives other values; either is refused.

Dynamic NTK is refused before conversion: llama.cpp has no rope scaling that recomputes the base
from the running length, and its converter silently drops it (the GGUF would run plain RoPE at the
original window). Static NTK is a plain change of base, which `freq_base` carries exactly.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posinterp.cli import arg, as_config
from posinterp.errors import PosinterpError, cause

log = logging.getLogger(__name__)

LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_SDIST = f"llama-cpp-python=={LLAMA_CPP_VERSION}"
SCRIPT = "convert_hf_to_gguf.py"
VENDOR = "vendor/llama.cpp/"
KEEP = (SCRIPT, "LICENSE", "conversion/", "gguf-py/gguf/", "gguf-py/LICENSE", "models/templates/")
"""What the converter needs from the sdist's vendor/llama.cpp (files, or folders ending in /)."""

OUTTYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "bf16": "MOSTLY_BF16", "f32": "ALL_F32"}
"""--outtype → the gguf.LlamaFileType the file must declare."""
ROPE_TYPES = ("default", "linear", "yarn", "llama3")
"""Rope types whose GGUF keys are checked; `default` covers none and static NTK."""
GGUF_SCALING = ("linear", "yarn")
"""Rope types the GGUF names in `{arch}.rope.scaling.type` (llama3 has no such type: see ROPE_FREQS)."""
ROPE_FREQS = "rope_freqs.weight"
"""The tensor in which llama.cpp's converter writes llama3's per-frequency divisors (no `{arch}.` prefix)."""
UNEXPRESSIBLE = {
    "dynamic": "dynamic NTK recomputes the RoPE base from the running length, which llama.cpp cannot express "
               "(its converter drops it and the GGUF would run plain RoPE at the original window); "
               "export a pi, yarn, llama3 or ntk checkpoint instead",
}


@dataclass
class GgufExportConfig:
    checkpoint: Path = arg(help="checkpoint folder written by posinterp extend or train (or any HF folder)",
                           positional=True)
    out: Path = arg(help="the .gguf file to write")
    outtype: str = arg("f16", help="weight type of the GGUF", choices=tuple(OUTTYPES))
    force: bool = arg(False, help="replace an existing --out")

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        self.out = Path(self.out)
        if self.outtype not in OUTTYPES:
            raise PosinterpError(f"--outtype {self.outtype!r}: choose one of {', '.join(OUTTYPES)}")


def converter(fetch: bool = True) -> Path:
    """llama.cpp's convert_hf_to_gguf.py, unpacked once from the pinned sdist ($POSINTERP_LLAMA_CPP: a llama.cpp folder)."""
    env = os.environ.get("POSINTERP_LLAMA_CPP")
    if env:
        script = Path(env).expanduser() / SCRIPT
        if not script.is_file():
            raise PosinterpError(f"POSINTERP_LLAMA_CPP={env} has no {SCRIPT}; point it at a llama.cpp folder")
        return script
    from posinterp.cache import cache_dir

    target = cache_dir() / "llama.cpp" / f"llama-cpp-python-{LLAMA_CPP_VERSION}"
    if (target / SCRIPT).is_file():
        return target / SCRIPT
    if not fetch:
        raise PosinterpError(f"llama.cpp's converter is not fetched; run `make setup` or "
                             f"pip download --no-deps --no-binary :all: {LLAMA_CPP_SDIST}")
    from posinterp.atomic import atomic_dir

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as download:
        archive = fetch_sdist(Path(download))
        with atomic_dir(target, force=True) as tmp:
            unpack(archive, tmp, KEEP)
            if not (tmp / SCRIPT).is_file():
                raise PosinterpError(f"{archive.name} holds no {VENDOR}{SCRIPT}; pin another llama-cpp-python release")
    return target / SCRIPT


def fetch_sdist(into: Path) -> Path:
    """The pinned llama-cpp-python sdist, fetched into `into` with pip download (one line if pip cannot)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
           "--disable-pip-version-check", LLAMA_CPP_SDIST, "-d", str(into)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(into.glob("*.tar.gz"))
    if result.returncode != 0 or not archives:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        raise PosinterpError(f"could not fetch {LLAMA_CPP_SDIST} with pip download "
                             f"({lines[-1] if lines else 'no archive'}); set POSINTERP_LLAMA_CPP to a llama.cpp folder")
    return archives[0]


def unpack(archive: Path, into: Path, keep: tuple[str, ...] | None = None) -> None:
    """The sdist's vendor/llama.cpp files into `into` (only those under `keep`: files, or folders ending in /;
    all when None), no path leaving `into`, modes kept."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            _, sep, rel = member.name.partition("/" + VENDOR)
            if not sep or not member.isfile() or ".." in Path(rel).parts:
                continue
            if keep is not None and not any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in keep):
                continue
            path = into / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tar.extractfile(member).read())
            path.chmod(member.mode | 0o600)


def expected_keys(config: Any, outtype: str) -> dict[str, Any]:
    """What the GGUF must say, from the checkpoint's config (keys without the `{arch}.` prefix)."""
    import gguf

    from posinterp.model.rope import rope_parameters

    params = rope_parameters(config)
    rope_type = params["rope_type"]
    if rope_type in UNEXPRESSIBLE:
        raise PosinterpError(f"rope_type {rope_type}: {UNEXPRESSIBLE[rope_type]}")
    if rope_type not in ROPE_TYPES:
        raise PosinterpError(f"rope_type {rope_type}: posinterp checks the GGUF keys of {', '.join(ROPE_TYPES)} "
                             f"rope only; run llama.cpp's {SCRIPT} yourself for this model")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    keys: dict[str, Any] = {
        "context_length": int(config.max_position_embeddings),
        "rope.freq_base": float(theta) if theta is not None else None,
        "rope.scaling.type": rope_type if rope_type in GGUF_SCALING else None,
        "rope.scaling.factor": float(params["factor"]) if rope_type in GGUF_SCALING else None,
        "rope.scaling.original_context_length": (int(params["original_max_position_embeddings"])
                                                 if rope_type == "yarn" else None),
        "general.file_type": int(gguf.LlamaFileType[OUTTYPES[outtype]]),
    }
    if rope_type == "llama3":
        keys[ROPE_FREQS] = llama3_divisors(config)
    return keys


def llama3_divisors(config: Any) -> list[float]:
    """θ_j / θ'_j for each rotary frequency: 1 where llama3 keeps it, s where it interpolates, between in the band.

    From transformers' own llama3 function against the unscaled frequencies of the same dim."""
    import copy

    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from posinterp.model.rope import head_dim, rope_parameters

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](copy.deepcopy(config), "cpu")
    d = head_dim(config)
    theta = float(rope_parameters(config)["rope_theta"])
    base = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    return [float(v) for v in base / scaled]


def plan(cfg: GgufExportConfig) -> dict[str, Any]:
    """Every refusal before any work: the checkpoint, its rope method, --out. Returns the expected keys."""
    from posinterp.model import facts, refs

    src = cfg.checkpoint
    if not src.exists():
        raise PosinterpError(f"checkpoint {src} does not exist; give the folder written by posinterp extend or train")
    if src.is_file():
        what = "is already a GGUF" if src.suffix == ".gguf" else "is a file"
        raise PosinterpError(f"checkpoint {src} {what}; give a checkpoint folder (config.json and safetensors)")
    if not (src / "config.json").is_file():
        raise PosinterpError(f"checkpoint {src} has no config.json: not a Hugging Face checkpoint; give the "
                             "folder written by posinterp extend or train")
    ref = refs.resolve(src)  # damaged config or weights: one line naming the file
    if not (list(src.glob("*.safetensors")) or list(src.glob("pytorch_model*.bin"))):
        raise PosinterpError(f"checkpoint {src} has no weights (model.safetensors); it is incomplete: write it again")
    if not ((src / "tokenizer.json").is_file() or (src / "tokenizer.model").is_file()):
        raise PosinterpError(f"checkpoint {src} has no tokenizer.json or tokenizer.model, which llama.cpp's "
                             "converter needs; copy the tokenizer files from the source model")
    config = facts.load_config(ref)
    facts.check_rope(config)
    expected = expected_keys(config, cfg.outtype)
    from posinterp.atomic import check_kind

    out = check_kind(cfg.out, "--out", "file")
    if out.exists() and not cfg.force:
        raise PosinterpError(f"--out {out} exists; choose another path or pass --force")
    return expected


def _convert(script: Path, checkpoint: Path, outfile: Path, outtype: str) -> None:
    """Run llama.cpp's converter in a subprocess (its own gguf-py first on the path)."""
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(script.parent / "gguf-py"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(script), str(checkpoint), "--outfile", str(outfile), "--outtype", outtype]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
        raise PosinterpError(f"llama.cpp's {SCRIPT} failed on {checkpoint} (exit {result.returncode}): "
                             f"{lines[-1] if lines else 'no output'}")
    if not outfile.is_file():
        raise PosinterpError(f"llama.cpp's {SCRIPT} wrote no file at {outfile}")


def read_keys(path: Path) -> dict[str, Any]:
    """The window and rope keys of a GGUF (without the `{arch}.` prefix), via the `gguf` package."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        fields = reader.fields
    except Exception as err:
        raise PosinterpError(f"{path} cannot be read back as a GGUF ({cause(err)})") from None

    def value(key: str) -> Any:
        return fields[key].contents() if key in fields else None

    arch = value("general.architecture")
    keys = {"general.architecture": arch, "general.file_type": value("general.file_type")}
    for key in ("context_length", "rope.freq_base", "rope.scaling.type", "rope.scaling.factor",
                "rope.scaling.original_context_length"):
        keys[key] = value(f"{arch}.{key}")
    tensors = {t.name: t for t in reader.tensors}
    keys[ROPE_FREQS] = [float(v) for v in tensors[ROPE_FREQS].data.reshape(-1)] if ROPE_FREQS in tensors else None
    return keys


def disagreements(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """`key found ≠ expected` for each key that llama.cpp would read differently."""
    bad = []
    for key, want in expected.items():
        got = found.get(key)
        if key == "rope.scaling.type" and want is None and got in (None, "none"):
            continue
        if key == "rope.scaling.factor" and want is None and got in (None, 0.0, 1.0):
            continue
        if key == ROPE_FREQS:
            if got is not None and len(got) == len(want) and all(math.isclose(a, b, rel_tol=1e-5)
                                                                  for a, b in zip(got, want)):
                continue
            shown = "absent" if got is None else f"[{', '.join(f'{v:.4g}' for v in got)}]"
            bad.append(f"tensor {key} {shown} ≠ llama3's [{', '.join(f'{v:.4g}' for v in want)}]")
            continue
        if isinstance(want, float) and isinstance(got, int | float):
            if math.isclose(want, got, rel_tol=1e-6):  # GGUF stores float32
                continue
        elif got == want:
            continue
        name = key if key.startswith("general.") else f"{found.get('general.architecture')}.{key}"
        bad.append(f"{name} {got!r} ≠ {want!r}")
    return bad


def export_gguf(cfg: GgufExportConfig | str | Path | None = None, **kwargs) -> dict[str, Any]:
    """Write `cfg.out` with llama.cpp's converter and return the GGUF keys checked (and the path).

    `export_gguf(GgufExportConfig(...))` or `export_gguf("runs/x", out="x.gguf", outtype="q8_0")`.
    """
    cfg = as_config(GgufExportConfig, cfg, kwargs)
    expected = plan(cfg)
    script = converter()
    out = cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}.gguf"
    try:
        log.info("converting %s with llama.cpp's %s (%s) ...", cfg.checkpoint, SCRIPT, LLAMA_CPP_SDIST)
        _convert(script, cfg.checkpoint, tmp, cfg.outtype)
        found = read_keys(tmp)
        bad = disagreements(expected, found)
        if bad:
            raise PosinterpError(f"the GGUF from llama.cpp's converter disagrees with {cfg.checkpoint / 'config.json'}: "
                                 f"{'; '.join(bad)}; nothing written")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    arch = found["general.architecture"]
    checked = {(k if k.startswith("general.") or k == ROPE_FREQS else f"{arch}.{k}"): found[k]
               for k in ("general.architecture", *expected)}
    log.info("wrote %s; keys checked: %s", out, ", ".join(f"{k}={v}" for k, v in checked.items()))
    return {"out": str(out), "outtype": cfg.outtype, "keys": checked}
