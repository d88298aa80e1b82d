"""Correlation metrics between predicted scores and MOS (the numbers every IQA/VQA paper reports).

`final = (SRCC + PLCC) / 2` is the VQualA challenge's score that IOVQA reports. Items without a
prediction (an answer that did not parse) are excluded from the correlations and counted in
`n_missing`: a metric computed on fewer items says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def correlations(pred: Sequence[float | None], mos: Sequence[float]) -> dict[str, float]:
    """SRCC, PLCC, KRCC, RMSE (on the scales given), final, n and n_missing."""
    p = np.array([np.nan if v is None else float(v) for v in pred], dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    if p.shape != m.shape:
        raise ValueError(f"{len(p)} predictions but {len(m)} MOS values")
    if not np.isfinite(m).all():
        raise ValueError("MOS contains NaN/inf; validate the manifest first")
    ok = np.isfinite(p)
    n = int(ok.sum())
    out = {"n": n, "n_missing": int((~ok).sum())}
    if n < 3 or np.ptp(p[ok]) == 0 or np.ptp(m[ok]) == 0:
        # a constant prediction has no rank correlation; report NaN rather than a made-up 0
        out.update(srcc=math.nan, plcc=math.nan, krcc=math.nan, final=math.nan)
        out["rmse"] = float(np.sqrt(np.mean((p[ok] - m[ok]) ** 2))) if n else math.nan
        return out
    srcc = float(stats.spearmanr(p[ok], m[ok]).statistic)
    plcc = float(stats.pearsonr(p[ok], m[ok]).statistic)
    krcc = float(stats.kendalltau(p[ok], m[ok]).statistic)
    out.update(
        srcc=srcc,
        plcc=plcc,
        krcc=krcc,
        rmse=float(np.sqrt(np.mean((p[ok] - m[ok]) ** 2))),
        final=(srcc + plcc) / 2,
    )
    return out


__all__ = ["correlations"]
