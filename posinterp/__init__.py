"""posinterp: extend RoPE models' context windows by Position Interpolation, and prove it.

The library API mirrors the CLI: each verb is a function taking its config dataclass.
Imports are lazy so `import posinterp` stays cheap.
"""

from __future__ import annotations

from posinterp import lazy

__version__ = "0.1.0"

_EXPORTS = {
    "extend": "posinterp.model.extend", "ExtendConfig": "posinterp.model.extend",
    "RopeSpec": "posinterp.model.rope", "parse_rope": "posinterp.model.rope",
    "resolve": "posinterp.model.refs", "load": "posinterp.model.loader",
    "PosinterpError": "posinterp.errors",
}

__getattr__ = lazy.exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
