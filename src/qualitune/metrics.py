"""Correlation metrics between predicted scores and MOS (the numbers every IQA/VQA paper reports).

PLCC is reported raw and after the VQEG 4-parameter logistic mapping (`logistic_fit`), which the
IQA literature applies before PLCC/RMSE so that a monotone but non-linear scorer is not penalised.

`final = (SRCC + PLCC) / 2` is the VQualA challenge's score that IOVQA reports. Items without a
prediction (an answer that did not parse) are excluded from the correlations and counted in
`n_missing`: a metric computed on fewer items says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from qualitune.errors import QualituneError

log = logging.getLogger(__name__)


def logistic4(x, b1: float, b2: float, b3: float, b4: float):
    """VQEG's 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    z = np.clip(-(np.asarray(x, dtype=np.float64) - b3) / max(abs(b4), 1e-12), -500, 500)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def _increasing_logistic(x, d: float, b2: float, b3: float, b4: float):
    """`logistic4` with b1 = b2 + d, d >= 0: monotone non-decreasing in x, as VQEG prescribes."""
    return logistic4(x, b2 + d, b2, b3, b4)


def logistic_fit(pred, mos) -> np.ndarray:
    """Fit VQEG's monotone increasing `logistic4` from predictions to MOS (least squares, VQEG's
    initial guess) and return the mapped predictions. Unconstrained, the fit may turn decreasing
    and flip the sign of an anti-correlated prediction's PLCC (a demo run reported +0.241 where PLCC
    was -0.077); the step b1 - b2 is therefore bounded at >= 0. A fit that fails to converge raises
    ValueError instead of returning junk."""
    from scipy.optimize import curve_fit

    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    if len(x) <= 4:  # four parameters: fewer points than that make the fit meaningless (scipy refuses)
        raise QualituneError(f"logistic fit needs at least 5 items, got {len(x)}")
    p0 = [float(np.ptp(y)) or 1.0, float(y.min()), float(np.mean(x)), float(np.std(x)) or 1.0]
    bounds = ([0.0, -np.inf, -np.inf, -np.inf], [np.inf, np.inf, np.inf, np.inf])
    import warnings

    from scipy.optimize import OptimizeWarning

    try:
        with warnings.catch_warnings():  # "covariance could not be estimated": we only use the fit
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_increasing_logistic, x, y, p0=p0, bounds=bounds, max_nfev=20000)
    except RuntimeError as exc:
        raise QualituneError(f"logistic fit did not converge: {exc}") from exc
    return _increasing_logistic(x, *params)


def correlations(pred: Sequence[float | None], mos: Sequence[float]) -> dict[str, float]:
    """SRCC, PLCC, KRCC, RMSE (on the scales given), final, n and n_missing."""
    p = np.array([np.nan if v is None else float(v) for v in pred], dtype=np.float64)
    m = np.asarray(mos, dtype=np.float64)
    if p.shape != m.shape:
        raise QualituneError(f"{len(p)} predictions but {len(m)} MOS values")
    if not np.isfinite(m).all():
        raise QualituneError("MOS contains NaN/inf; validate the manifest first")
    ok = np.isfinite(p)
    n = int(ok.sum())
    out = {"n": n, "n_missing": int((~ok).sum())}
    if n < 3 or np.ptp(p[ok]) == 0 or np.ptp(m[ok]) == 0:
        # a constant prediction has no rank correlation; report NaN rather than a made-up 0
        out.update(
            srcc=math.nan,
            plcc=math.nan,
            plcc_logistic=math.nan,
            rmse_logistic=math.nan,
            krcc=math.nan,
            final=math.nan,
        )
        out["rmse"] = float(np.sqrt(np.mean((p[ok] - m[ok]) ** 2))) if n else math.nan
        return out
    srcc = float(stats.spearmanr(p[ok], m[ok]).statistic)
    plcc = float(stats.pearsonr(p[ok], m[ok]).statistic)
    krcc = float(stats.kendalltau(p[ok], m[ok]).statistic)
    try:
        fitted = logistic_fit(p[ok], m[ok])
        plcc_log = float(stats.pearsonr(fitted, m[ok]).statistic) if np.ptp(fitted) > 1e-9 else math.nan
        rmse_log = float(np.sqrt(np.mean((fitted - m[ok]) ** 2)))
        if np.isfinite(plcc_log) and plcc_log * plcc < 0:  # a monotone map should not flip it; if it does,
            log.warning(  # the fitted correlation says nothing the raw one does not: no number
                "plcc_logistic %.3f has the opposite sign of PLCC %.3f (a near-flat fit); reported as NaN",
                plcc_log,
                plcc,
            )
            plcc_log = math.nan
    except ValueError:
        plcc_log = rmse_log = math.nan
    out.update(
        srcc=srcc,
        plcc=plcc,
        plcc_logistic=plcc_log,
        rmse_logistic=rmse_log,
        krcc=krcc,
        rmse=float(np.sqrt(np.mean((p[ok] - m[ok]) ** 2))),
        final=(srcc + plcc) / 2,
    )
    return out


__all__ = ["correlations", "logistic4", "logistic_fit"]
