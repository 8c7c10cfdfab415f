"""Package versions recorded in every output, so a number can be traced to its stack."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("posinterp", "torch", "transformers", "accelerate", "datasets", "peft", "gguf", "tokenizers")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
