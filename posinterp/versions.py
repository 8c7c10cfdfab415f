"""Package versions recorded in every output, so a number can be traced to its stack."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("posinterp", "torch", "transformers", "accelerate", "datasets", "peft", "gguf", "tokenizers")


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            **{name: package_version(name) for name in PACKAGES}}
