"""Package versions recorded in every output, so a number can be traced to its stack."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("posinterp", "torch", "transformers", "accelerate", "datasets", "peft", "gguf", "tokenizers")
RESULT_PACKAGES = ("posinterp", "torch", "transformers")
"""The packages whose version changes a stage's numbers: `run` reruns a stage made under other versions of these."""


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            **{name: package_version(name) for name in PACKAGES}}


def result_versions() -> dict[str, str]:
    """The versions of `RESULT_PACKAGES`, as each stage of `run` records them (`run/stamps.py`)."""
    return {name: package_version(name) for name in RESULT_PACKAGES}
