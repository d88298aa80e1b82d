"""Params overlays: a small YAML file of params.yaml values that turns the pipeline into a variant.

An overlay (e.g. `configs/params/real-data.yaml`) holds only the keys it changes, as a nested
mapping with params.yaml's shape. It is applied the way DVC applies experiment parameters: every
leaf becomes one `dvc exp run -S key=value`, so a variant is the same `dvc.yaml` stages with other
params, recorded as a DVC experiment (`dvc exp show`), never a second pipeline. A leaf set to `null`
removes an option from the run (e.g. the demo's `ingest.options.split_col`, which a dataset without
that column must not get). Every key must already exist in params.yaml: a typo fails here, with the
key's name, instead of running the default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from qualitune.errors import QualituneError


def read_overlay(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise QualituneError(f"params overlay not found: {p}")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise QualituneError(
            f"{p}: a params overlay is a mapping of params.yaml sections, got {type(data).__name__}"
        )
    return data


def leaves(
    overlay: Mapping[str, Any], params: Mapping[str, Any] | None = None, prefix: str = ""
) -> list[tuple[str, Any]]:
    """`(dotted.key, value)` for every leaf of a nested mapping (lists are leaves). With `params`,
    a mapping whose params.yaml value is not a mapping (e.g. `ingest.holdout: null`) stays whole:
    one assignment of the mapping, since there are no keys to merge into."""
    out: list[tuple[str, Any]] = []
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        base = params.get(key) if isinstance(params, Mapping) else None
        nested = params is None or isinstance(base, Mapping)
        if isinstance(value, Mapping) and value and nested:
            out += leaves(value, base if params is not None else None, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` (dotted key, YAML value) as given to `--set`."""
    if "=" not in text:
        raise QualituneError(f"--set takes key=value (a dotted params key, a YAML value), got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def check_keys(params: Mapping[str, Any], assignments: Iterable[tuple[str, Any]]) -> None:
    """Refuse keys params.yaml does not have (where the parent is a mapping of known keys)."""
    for key, _ in assignments:
        node: Any = params
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, Mapping):
                raise QualituneError(f"params key {key!r}: {'.'.join(parts[:i])} is not a section")
            if part not in node:
                # options of a dataset format are free-form: a new one is allowed there
                if ".".join(parts[:i]) == "ingest.options":
                    break
                raise QualituneError(
                    f"params key {key!r} is not in params.yaml (no {part!r} under {'.'.join(parts[:i]) or 'the top level'})"
                )
            node = node[part]


_BARE = re.compile(r"^[A-Za-z0-9_./\-+@:]+$")
_RESERVED = {"null", "true", "false", "nan", "inf", "-inf"}


def hydra_value(value: Any) -> str:
    """`value` in the override grammar `dvc exp run -S` parses (Hydra's): null, true/false,
    numbers, bare or quoted strings, `[a,b]` lists and `{k:v}` mappings, so types survive."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _BARE.match(value) and value.lower() not in _RESERVED and not _looks_numeric(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise QualituneError(f"a params value must be YAML data, got {type(value).__name__}: {value!r}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def has_key(params: Mapping[str, Any], key: str) -> bool:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def dvc_set_flags(
    assignments: Iterable[tuple[str, Any]], params: Mapping[str, Any] | None = None
) -> list[str]:
    """`["-S", "key=value", ...]` for `dvc exp run` (values in `hydra_value`'s grammar); a key
    `params` lacks (a new dataset option) is added with Hydra's `+key=value`."""
    flags: list[str] = []
    for key, value in assignments:
        new = params is not None and not has_key(params, key)
        flags += ["-S", f"{'+' if new else ''}{key}={hydra_value(value)}"]
    return flags


def apply(params: Mapping[str, Any], assignments: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of `params` with the assignments applied (what the experiment's params.yaml holds)."""
    import copy

    out = copy.deepcopy(dict(params))
    for key, value in assignments:
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


__all__ = [
    "apply",
    "check_keys",
    "dvc_set_flags",
    "has_key",
    "hydra_value",
    "leaves",
    "parse_assignment",
    "read_overlay",
]
