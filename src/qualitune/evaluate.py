"""Scoring a manifest split with a scorer and measuring it against MOS.

Predictions are compared on the 1-5 scale (`score_1_5`, i.e. the format's scale mapped linearly),
so RMSE is comparable across label ranges; rank and linear correlations do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qualitune.metrics import correlations
from qualitune.scorer import Scorer


def predict_frame(scorer: Scorer, df: pd.DataFrame, *, mode: str, batch_size: int = 8) -> pd.DataFrame:
    """One row per manifest row: item_id, split, mos_norm, score, score_1_5, error, answer."""
    run = scorer.score_paths(df["path"].astype(str).tolist(), mode=mode, batch_size=batch_size)
    out = pd.DataFrame(run.results)
    out.insert(0, "item_id", df["item_id"].astype(str).to_numpy())
    out["split"] = df["split"].astype(str).to_numpy()
    out["mos_norm"] = df["mos_norm"].to_numpy(dtype=float)
    for col in ("score", "score_1_5", "error", "answer", "invalid_mass"):
        if col not in out.columns:
            out[col] = None
    out.attrs["summary"] = run.summary()
    return out


def evaluate_split(
    scorer: Scorer, df: pd.DataFrame, *, modes: Sequence[str] = ("expected", "greedy"), batch_size: int = 8
) -> tuple[dict[str, dict], dict[str, pd.DataFrame]]:
    """Metrics per scoring mode (correlations + parse-failure figures) and the prediction tables."""
    metrics: dict[str, dict] = {}
    preds: dict[str, pd.DataFrame] = {}
    for mode in modes:
        pred = predict_frame(scorer, df, mode=mode, batch_size=batch_size)
        m = correlations(pred["score_1_5"].tolist(), pred["mos_norm"].tolist())
        summary = pred.attrs["summary"]
        m["parse_failures"] = summary.get("parse_failures", 0)
        m["parse_failure_rate"] = summary.get("parse_failure_rate", 0.0)
        m["media_errors"] = summary.get("media_errors", 0)
        if mode == "expected":
            m["invalid_mass_mean"] = float(pd.to_numeric(pred["invalid_mass"], errors="coerce").mean())
        metrics[mode] = m
        preds[mode] = pred
    return metrics, preds


__all__ = ["evaluate_split", "predict_frame"]
