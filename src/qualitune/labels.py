"""MOS → training labels (IOVQA's integer labels, the decimal baseline, and Q-Align's five levels).

IOVQA's observation: a VLM learns a bare integer ("35") better than a decimal ("3.5"), because the
decimal point splits one quantity into two unrelated tokens and the loss on the "." is wasted.

General formula, for a label range [lo, hi] and mos_norm m on the 1–5 scale::

    label = clamp( floor( lo + (m - 1) / 4 * (hi - lo) + 1/2 ), lo, hi )

- [10, 50] (the paper's default): label = 10·m rounded = "MOS rounded to one decimal, times 10".
- [1, 5]: the nearest integer score; [0, 100]: 25·(m − 1) rounded.
The inverse is m' = 1 + 4·(label − lo)/(hi − lo); |m' − m| ≤ half a step, a step being 4/(hi − lo).
Rounding is half-up (not Python's half-to-even) so that equal MOS always give equal labels whatever
their float history.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError
from qualitune.manifest import NORM_MAX, NORM_MIN

LEVEL_WORDS = ("bad", "poor", "fair", "good", "excellent")
FORMATS = ("integer", "decimal")


@dataclass(frozen=True)
class LabelRange:
    """An integer label range [lo, hi]; lo < hi, both integers."""

    lo: int = 10
    hi: int = 50

    def __post_init__(self) -> None:
        if int(self.lo) != self.lo or int(self.hi) != self.hi:
            raise QualituneError(f"label range bounds must be integers, got [{self.lo}, {self.hi}]")
        if not self.hi > self.lo:
            raise QualituneError(f"label range must satisfy lo < hi, got [{self.lo}, {self.hi}]")

    @property
    def step(self) -> float:
        """One integer step expressed on the 1–5 scale."""
        return (NORM_MAX - NORM_MIN) / (self.hi - self.lo)


def _check_norm(mos_norm: np.ndarray) -> np.ndarray:
    m = np.asarray(mos_norm, dtype=np.float64)
    bad = ~np.isfinite(m)
    if bad.any():
        raise QualituneError(f"{int(bad.sum())} mos_norm values are NaN/inf; validate the manifest first")
    return m


def to_integer(mos_norm, rng: LabelRange = LabelRange()) -> np.ndarray:
    """mos_norm (1–5) → integer labels in [lo, hi] (clamped; see module docstring)."""
    m = _check_norm(mos_norm)
    x = rng.lo + (m - NORM_MIN) / (NORM_MAX - NORM_MIN) * (rng.hi - rng.lo)
    return np.clip(np.floor(x + 0.5), rng.lo, rng.hi).astype(np.int64)


def from_integer(labels, rng: LabelRange = LabelRange()) -> np.ndarray:
    """Integer labels (or expected values between them) → the 1–5 scale."""
    x = np.asarray(labels, dtype=np.float64)
    return NORM_MIN + (x - rng.lo) / (rng.hi - rng.lo) * (NORM_MAX - NORM_MIN)


def to_decimal_text(mos_norm) -> list[str]:
    """The decimal-label baseline: mos_norm rounded half-up to one decimal, e.g. "3.5"."""
    m = np.clip(_check_norm(mos_norm), NORM_MIN, NORM_MAX)
    tenths = np.floor(m * 10 + 0.5).astype(np.int64)
    return [f"{t // 10}.{t % 10}" for t in tenths]


def to_level(mos_norm) -> np.ndarray:
    """mos_norm → quality level index 0..4 (bad … excellent): five equal bins of [1, 5]."""
    m = np.clip(_check_norm(mos_norm), NORM_MIN, NORM_MAX)
    return np.clip(np.floor((m - NORM_MIN) / (NORM_MAX - NORM_MIN) * 5), 0, 4).astype(np.int64)


def add_labels(df: pd.DataFrame, *, fmt: str = "integer", rng: LabelRange = LabelRange()) -> pd.DataFrame:
    """Add `label_int`, `label_text` (the answer the model is trained to give), `level` and `level_word`."""
    if fmt not in FORMATS:
        raise QualituneError(f"label format must be one of {FORMATS}, got {fmt!r}")
    out = df.copy()
    m = out["mos_norm"].to_numpy()
    out["label_int"] = to_integer(m, rng)
    out["label_text"] = [str(v) for v in out["label_int"]] if fmt == "integer" else to_decimal_text(m)
    out["level"] = to_level(m)
    out["level_word"] = [LEVEL_WORDS[i] for i in out["level"]]
    return out
