"""`metrics.jsonl` along a fine-tune (one row per step, appended and flushed), and the peak memory it reports.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)



def _peak_memory_gb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


class Metrics:
    """metrics.jsonl (truncated to the resumed step) and TensorBoard, on the main process."""

    def __init__(self, folder: Path, start: int, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = Path(folder) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= start]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(Path(folder) / "tensorboard"), purge_step=start + 1)
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("warning: tensorboard is not installed; metrics go to %s only", self.path)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None and row.get("kind") == "eval":
            for length, accuracy in row.get("passkey", {}).items():
                self.writer.add_scalar(f"eval/passkey_{length}", accuracy, row["step"])
            if row.get("ppl") is not None:
                self.writer.add_scalar("eval/ppl", row["ppl"], row["step"])
        elif self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "peak_mem_gb"):
                value = row.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
