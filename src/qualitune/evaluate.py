"""Scoring a manifest split with a scorer and measuring it against MOS.

Predictions are compared on the 1-5 scale (`score_1_5`, i.e. the format's scale mapped linearly),
so RMSE is comparable across label ranges; rank and linear correlations do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from qualitune.errors import QualituneError
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


# -- labelled folders (`qualitune evaluate --root DIR`) -----------------------------------------------

STANDARD_SCALES = ((0.0, 1.0), (1.0, 5.0), (0.0, 5.0), (0.0, 10.0), (0.0, 100.0))
"""MOS scales a folder's values are matched against when none is given, smallest first."""


def infer_scale(mos) -> tuple[float, float]:
    """The smallest standard MOS scale holding every finite value ([0,1], [1,5], [0,5], [0,10], [0,100])."""
    import numpy as np

    values = pd.to_numeric(pd.Series(mos), errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise QualituneError("no numeric MOS value to infer the scale from; pass --scale MIN MAX")
    lo, hi = float(values.min()), float(values.max())
    for a, b in STANDARD_SCALES:
        if a <= lo and hi <= b:
            return a, b
    raise QualituneError(
        f"MOS values span [{lo:g}, {hi:g}], outside every standard scale; pass --scale MIN MAX"
    )


def read_labelled_root(
    root, scale: tuple[float, float] | None = None
) -> tuple[pd.DataFrame, list[dict], dict]:
    """A folder laid out as `labels.csv` (`image_name,mos[,std]`) + `images/` as a manifest of the
    rows that can be scored, the rows that cannot (`{"name", "reason"}`: no file, MOS missing or
    outside the scale), and `{"scale", "scale_source"}`."""
    from pathlib import Path

    import numpy as np

    from qualitune.ingest import ingest

    root = Path(root)
    labels = root / "labels.csv"
    if not labels.is_file():
        raise QualituneError(
            f"{root}: no labels.csv (expected columns image_name,mos[,std] and the media in images/)"
        )
    head = pd.read_csv(labels, nrows=0).columns.str.strip().tolist()
    for col in ("image_name", "mos"):
        if col not in head:
            raise QualituneError(f"{labels} has no {col!r} column (columns: {head})")
    raw_mos = pd.read_csv(labels, usecols=["mos"])["mos"]
    source = "given" if scale is not None else "inferred"
    scale = tuple(float(x) for x in scale) if scale is not None else infer_scale(raw_mos)
    options = {"labels": "labels.csv", "name_col": "image_name", "mos_col": "mos", "scale": scale}
    if "std" in head:
        options["std_col"] = "std"
    df = ingest("csv", root, split_ratios={"test": 1.0}, seed=0, dataset=root.name, **options)
    df["name"] = df["item_id"].astype(str).str.slice(len(root.name) + 1)  # item_id is "<dataset>/<name>"
    mos = pd.to_numeric(df["mos"], errors="coerce").to_numpy(dtype=float)
    exists = np.array([Path(p).is_file() for p in df["path"].astype(str)])
    reasons = np.full(len(df), None, dtype=object)
    reasons[~exists] = "file not found"
    bad_mos = ~np.isfinite(mos)
    reasons[bad_mos & (reasons == None)] = "MOS is missing or not a number"  # noqa: E711
    outside = np.isfinite(mos) & ((mos < scale[0]) | (mos > scale[1]))
    for i in np.flatnonzero(outside & (reasons == None)):  # noqa: E711
        reasons[i] = f"MOS {mos[i]:g} outside the scale [{scale[0]:g}, {scale[1]:g}]"
    failed = [
        {"name": str(n), "path": str(p), "reason": str(r)}
        for n, p, r in zip(df["name"], df["path"], reasons, strict=True)
        if r is not None
    ]
    keep = np.array([r is None for r in reasons])
    return df[keep].reset_index(drop=True), failed, {"scale": list(scale), "scale_source": source}


def evaluate_root(
    scorer: Scorer,
    root,
    *,
    mode: str = "expected",
    scale: tuple[float, float] | None = None,
    batch_size: int = 16,
) -> dict:
    """SRCC/PLCC/KRCC/final of `scorer` on a labelled folder, with every item that could not be
    scored counted in `n_failed` and listed in `failed` (name, reason): missing or unreadable
    files, MOS outside the scale, unparseable answers. Never a silently shorter set."""
    df, failed, scale_info = read_labelled_root(root, scale)
    if len(df):
        pred = predict_frame(scorer, df, mode=mode, batch_size=batch_size)
        for name, path, err in zip(df["name"], df["path"], pred["error"], strict=True):
            if isinstance(err, str) and err:  # unreadable media or an unparseable answer
                failed.append({"name": str(name), "path": str(path), "reason": err})
        m = correlations(pred["score_1_5"].tolist(), pred["mos_norm"].tolist())
        summary = pred.attrs["summary"]
    else:
        m = correlations([], [])
        summary = {}
    return {
        "srcc": m["srcc"],
        "plcc": m["plcc"],
        "krcc": m["krcc"],
        "final": m["final"],
        "n": int(m["n"]),
        "n_failed": len(failed),
        "mode": mode,
        **scale_info,
        "parse_failures": int(summary.get("parse_failures", 0)),
        "media_errors": int(summary.get("media_errors", 0)),
        "failed": failed,
    }


__all__ += ["STANDARD_SCALES", "evaluate_root", "infer_scale", "read_labelled_root"]
