"""What this machine can do: the cores the process may use, which precision is fast, the matmul roofline.

    python -c "from posinterp.machine import probe; print(probe(refresh=True))"

Precision `auto` (the default of every verb) picks, on a GPU, bf16 where the device supports it, else
fp16 (with a loss scaler in training); on a CPU, bf16 only where it is measured to be fast. CPUs
differ by two orders of magnitude here: with AVX512_BF16 or AMX a bf16 matmul runs 2–6× faster than
fp32, on an AVX2-only CPU it falls back to a generic kernel ≈ 300× *slower* (0.0003 against 0.08–0.10
TFLOP/s on 2 cores). The CPU's feature flags say which kernel torch can use, but a short timed probe is
the ground truth, so the rule is measured: bf16 when its matmul is at least `BF16_MIN_SPEEDUP` × fp32.
The probe takes well under a second and is cached per machine (CPU model, flags, torch, threads).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from posinterp.errors import PosinterpError

log = logging.getLogger(__name__)

BF16_MIN_SPEEDUP = 1.25
"""On a CPU, `auto` picks bf16 only when its measured matmul is at least this many times fp32's: below
that, bf16's rounding buys too little time to be worth its error."""

PROBE_N = 1024
"""Side of the square probe matmul: the scale of a small model's hidden size × a chunk of tokens."""

SLOW_BF16_S = 0.02
"""A first 256³ bf16 matmul slower than this (< 1.7 GFLOP/s) is the generic fallback kernel: decided
at once, without the longer measurement (which would take seconds there), if it is also SLOW_RATIO
times slower than the same fp32 matmul."""
SLOW_RATIO = 10.0
"""The fallback is ≈ 200× slower than fp32 (an AVX2 CPU, or oneDNN capped at AVX2); a busy machine slows both."""
CACHE_ENTRIES = 8
"""Probe results kept, one per (CPU, flags, torch, threads, oneDNN cap): different thread counts don't evict each other."""

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
"""Names a user may give; `auto` is resolved by `choose_precision`."""
ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""precision name → the torch dtype attribute that holds weights and activations."""


def normalize(name: str, flag: str = "--precision") -> str:
    """`bfloat16` → `bf16` etc.; refuses names that are not a precision, naming the flag."""
    text = str(name).strip().lower()
    text = ALIASES.get(text, text)
    if text not in PRECISIONS:
        raise PosinterpError(f"{flag} {name!r}: choose auto, bf16 (bfloat16), fp16 (float16) or fp32 (float32)")
    return text


# -- cores -------------------------------------------------------------------------------------------
def _cgroup_cpus() -> float | None:
    """CPUs allowed by a cgroup v2 (cpu.max) or v1 (cfs quota) limit, or None where there is none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (not the host's count)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def set_threads() -> int:
    """Give torch the usable cores, split among the processes of this launch (no oversubscription).

    An explicit OMP_NUM_THREADS wins; under torchrun/accelerate (LOCAL_WORLD_SIZE processes on one
    host) each process gets its share.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        threads = max(1, usable_cores() // local)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


# -- the probe ----------------------------------------------------------------------------------------
def cpu_key() -> dict:
    import torch

    name, flags = None, ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            if line.startswith("model name") and name is None:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = ",".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in have)
                break
    except OSError:
        pass
    key = {"cpu": name or platform.processor() or platform.machine(), "flags": flags,
           "capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
           "threads": torch.get_num_threads()}
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if isa:  # oneDNN capped (e.g. AVX2: bf16 falls back to the slow path): a different machine to the probe
        key["onednn_max_isa"] = isa
    return key


def matmul_tflops(dtype: Any, n: int = PROBE_N, seconds: float = 0.15, device: str = "cpu") -> float:
    """Measured TFLOP/s of an n×n×n matmul in `dtype` (best of repeated runs for ≈ `seconds`)."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, page faults
    best, start = float("inf"), time.perf_counter()
    while True:
        t0 = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > seconds:
            break
    return 2 * n**3 / best / 1e12


def _first_call_s(dtype: Any) -> float:
    """Seconds of one 256³ matmul in `dtype`, after a warm-up call."""
    import torch

    a = torch.randn(256, 256).to(dtype)
    a @ a
    t0 = time.perf_counter()
    a @ a
    return time.perf_counter() - t0


def _measure() -> dict:
    import torch

    bf16_first, fp32_first = _first_call_s(torch.bfloat16), _first_call_s(torch.float32)
    fp32 = matmul_tflops(torch.float32)
    # the generic fallback: don't spend seconds confirming it. Relative to fp32's first call, so that a
    # machine busy with other work (every call slow) is measured properly rather than called slow
    if bf16_first > SLOW_BF16_S and bf16_first > SLOW_RATIO * fp32_first:
        bf16 = 2 * 256**3 / bf16_first / 1e12
    else:
        bf16 = matmul_tflops(torch.bfloat16)
    return {"bf16_tflops": round(bf16, 5), "fp32_tflops": round(fp32, 5), "speedup": round(bf16 / fp32, 4),
            "probe_n": PROBE_N}


PROBE_CACHE_ENV = "POSINTERP_PROBE_CACHE"
"""A file that replaces <cache>/machine-probe.json (the test suite points it at a temporary file, so a busy
test run never caches a wrong verdict for the user)."""


def probe_cache_path() -> Path:
    """The machine probe's cache file (the stage probe's cache lies beside it)."""
    import os

    from posinterp.cache import cache_dir

    return Path(os.environ[PROBE_CACHE_ENV]) if os.environ.get(PROBE_CACHE_ENV) else cache_dir() / "machine-probe.json"


def cached(path: Path, key: dict) -> dict | None:
    """The entry stored under `key` in a keyed cache file ({"entries": [{key, result, measured}, ...]}), or None
    (no file, a damaged one, no such key). The machine probe and the stage probe (`estimate`) both keep one."""
    try:
        entries = json.loads(Path(path).read_text()).get("entries", [])
    except (OSError, ValueError, AttributeError):
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("key") == key and "result" in e), None)


def store(path: Path, key: dict, result: dict) -> None:
    """Keep `result` under `key` (replacing it), with the newest `CACHE_ENTRIES` entries; a read-only cache
    is left as it is (measured again next time)."""
    from posinterp.atomic import write_json

    path = Path(path)
    try:
        entries = [e for e in json.loads(path.read_text()).get("entries", []) if isinstance(e, dict) and "key" in e]
    except (OSError, ValueError, AttributeError):
        entries = []
    entries = [e for e in entries if e["key"] != key][-(CACHE_ENTRIES - 1):] + [
        {"key": key, "result": result, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"entries": entries})
    except OSError:
        pass


def probe(refresh: bool = False) -> dict:
    """bf16 and fp32 matmul TFLOP/s on this CPU with the threads torch uses; cached per machine."""
    key = cpu_key()
    path = probe_cache_path()
    if not refresh and (hit := cached(path, key)) is not None:
        return {**hit["result"], **key, "cached": True}
    result = _measure()
    store(path, key, result)
    return {**result, **key, "cached": False}


# -- the choice ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    """The precision a verb computes in, and why."""

    name: str
    """bf16, fp16 or fp32."""
    reason: str
    requested: str = "auto"
    probe: dict | None = None

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, TORCH_DTYPE[self.name])

    def as_dict(self) -> dict:
        return asdict(self)


def choose_precision(requested: str = "auto", device: str = "cpu", flag: str = "--precision") -> Precision:
    """Resolve `auto` for `device` (cpu, cuda, cuda:N); an explicit precision is kept as asked."""
    requested = normalize(requested, flag)
    if requested != "auto":
        return Precision(requested, f"{flag} {requested}", requested)
    if str(device).startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", f"auto: {torch.cuda.get_device_name(index)} supports bf16")
        if torch.cuda.get_device_capability(index)[0] >= 6:
            return Precision("fp16", f"auto: {torch.cuda.get_device_name(index)} has no bf16; fp16 (loss-scaled in training)")
        return Precision("fp32", f"auto: {torch.cuda.get_device_name(index)} has neither bf16 nor fast fp16")
    p = probe()
    fast = p["speedup"] >= BF16_MIN_SPEEDUP
    why = (f"auto: bf16 matmul {p['bf16_tflops']:.3g} TFLOP/s vs fp32 {p['fp32_tflops']:.3g} "
           f"({p['speedup']:.3g}×, {p['capability']}, {p['threads']} threads"
           f"{', cached probe' if p.get('cached') else ''}): ")
    why += "bf16 is fast here" if fast else f"bf16 is not ≥ {BF16_MIN_SPEEDUP}× faster, fp32"
    return Precision("bf16" if fast else "fp32", why, "auto", p)


_announced: set[str] = set()


def announce(choice: Precision) -> None:
    """Print the choice and its reason once per process."""
    line = f"precision {choice.name} ({choice.reason})"
    if line not in _announced:
        _announced.add(line)
        log.info("%s", line)
