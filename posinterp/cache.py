"""Where posinterp keeps what it downloads or builds: `$POSINTERP_CACHE`, default `~/.cache/posinterp`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where posinterp keeps fetched and derived files ($POSINTERP_CACHE, default ~/.cache/posinterp)."""
    return Path(os.environ.get("POSINTERP_CACHE", Path.home() / ".cache" / "posinterp")).expanduser()
