"""Where qualitune keeps derived files it can rebuild (offline tokenizer, converted decoder, ONNX
graphs): `default_cache_dir`. Imports nothing from qualitune, so every backend may use it."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$QUALITUNE_CACHE` if set, else `$XDG_CACHE_HOME/qualitune` (default `~/.cache/qualitune`)."""
    if env := os.environ.get("QUALITUNE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qualitune"
