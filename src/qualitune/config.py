"""Reading `params.yaml`: one file holds every knob, and each DVC stage declares the keys it reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load the whole params file; a missing or malformed file is a clear error, not a silent default."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"params file not found: {p} (run from the project root or pass --params)")
    with p.open() as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ValueError(f"{p} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """Return one section, failing with the list of sections that do exist."""
    if name not in params:
        raise ValueError(f"params has no section {name!r}; sections: {sorted(params)}")
    value = params[name]
    if not isinstance(value, dict):
        raise ValueError(f"params section {name!r} must be a mapping")
    return value
