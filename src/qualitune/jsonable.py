"""Metrics and reports as plain JSON: one home for the conversions every writer needs.

Stage outputs, MLflow metrics and registry tags are built from numpy scalars, floats that may be
NaN, and nested dicts. Each writer used to carry its own small converter with slightly different
rules (bools kept or not, NaN kept or not); here there is one of each, and the rules are named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars and 0-d arrays as Python numbers, anything else as text."""
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return obj.item()
        except (TypeError, ValueError):
            pass
    return str(obj)


def json_safe(obj: Any) -> Any:
    """Strict JSON: NaN/inf become None, numpy scalars Python numbers, keys strings, tuples lists."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def numeric_only(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a (nested) metrics mapping, for MLflow: numpy scalars unwrapped, nested mappings
    kept (filtered the same way), bools, strings, None and lists dropped (MLflow metrics are floats)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out[key] = numeric_only(value)
            continue
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
    return out
