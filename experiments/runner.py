"""What the experiment scripts share: a `posinterp` command line, flags from a dict, running one command
with its output appended to a log (`# exit CODE after S s` closes each), failing loudly, and the machine's
CPU for a summary."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def posinterp(*args: str) -> list[str]:
    return [sys.executable, "-m", "posinterp", *args]


def flags(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


def sh(cmd: list[str], log: Path) -> float:
    """Run `cmd` with its output appended to `log`; returns wall seconds; stops the script on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
        fh.write(f"# exit {code} after {time.perf_counter() - t0:.1f} s\n")
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def machine() -> dict:
    """The CPU model, its cores, and which of the flags that decide `--precision auto` it has."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                 platform.processor())
    return {"cpu": model, "cores": os.cpu_count(),
            "flags": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in found)}
