"""Reading `params.yaml`: one file holds every knob, and each DVC stage declares the keys it reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from qualitune.errors import QualituneError

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Load the whole params file; a missing or malformed file is a clear error, not a silent default."""
    p = Path(path)
    if not p.is_file():
        raise QualituneError(f"params file not found: {p} (run from the project root or pass --params)")
    with p.open() as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise QualituneError(f"{p} must hold a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """Return one section, failing with the list of sections that do exist."""
    if name not in params:
        raise QualituneError(f"params has no section {name!r}; sections: {sorted(params)}")
    value = params[name]
    if not isinstance(value, dict):
        raise QualituneError(f"params section {name!r} must be a mapping")
    return value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `override` merged in (nested mappings merged key by key)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


TUNABLE_SECTIONS = ("model", "train")


def apply_tuned(params: dict[str, Any], path: str | Path | None) -> dict[str, Any]:
    """Overlay the best parameters an Optuna search wrote (`tune.out`) on `params`.

    The file holds a partial params mapping (e.g. `{train: {lr: 0.0003, lora: {r: 64}}}`); an absent
    or empty file changes nothing. Only the `model` and `train` sections may be overridden, so a
    search cannot silently move data paths or the registry gate.
    """
    if not path or not Path(path).is_file():
        return params
    tuned = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(tuned, dict):
        raise QualituneError(f"{path} must hold a mapping of params sections, got {type(tuned).__name__}")
    bad = sorted(set(tuned) - set(TUNABLE_SECTIONS))
    if bad:
        raise QualituneError(f"{path} overrides sections {bad}; only {list(TUNABLE_SECTIONS)} may be tuned")
    return deep_merge(params, tuned)


def checked_section(params: Mapping[str, Any], name: str, known: Sequence[str]) -> Mapping[str, Any]:
    """An optional params section (absent = `{}`) whose keys must all be in `known`.

    Unknown keys are errors, not ignored: a typo such as `n_trails` must not silently fall back to
    a default."""
    raw = params.get(name)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise QualituneError(f"params section {name!r} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise QualituneError(f"unknown key(s) in params section {name!r}: {unknown}; known: {list(known)}")
    return raw
