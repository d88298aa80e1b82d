"""qualitune's one cache root outside a project: registry downloads, the offline tokenizer, the
converted decoder and ONNX graphs all live under :func:`cache_dir`, so one variable
(``QUALITUNE_CACHE``) moves or clears them all. Imports nothing from qualitune, so any layer may use it.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "QUALITUNE_CACHE"


def cache_dir() -> Path:
    """`$QUALITUNE_CACHE` if set, else `$XDG_CACHE_HOME/qualitune` (default `~/.cache/qualitune`)."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qualitune"
