"""Where posinterp keeps what it downloads or builds: `$POSINTERP_CACHE`, default `~/.cache/posinterp`.
"""

from __future__ import annotations

import os
from pathlib import Path

from posinterp.atomic import check_kind

ENV = "POSINTERP_CACHE"


def cache_dir() -> Path:
    """Where posinterp keeps fetched and derived files ($POSINTERP_CACHE, default ~/.cache/posinterp).

    A file there (or a path inside a file) is refused in one line naming the variable, before a verb
    tries to make a folder in it; an empty $POSINTERP_CACHE means the default.
    """
    chosen = os.environ.get(ENV)
    if chosen:
        return check_kind(chosen, ENV, "folder")
    return check_kind(Path.home() / ".cache" / "posinterp", f"the default cache (set {ENV} for another)", "folder")
