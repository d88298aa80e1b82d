"""Machine opinion distributions (VITAL's PMOD) and attribute descriptions from annotator scores.

Several no-reference "machine annotators" score every item. Each annotator is mapped onto the 1–5
scale by a monotone calibration fitted on the *train split only* (so val/test never leak into it):

- `isotonic` (when the dataset has MOS): isotonic regression of mos_norm on the annotator's score,
  constrained to the annotator's declared direction, linearly interpolated and clipped outside the
  training range. It keeps each annotator's ranking and puts its scores on the human scale.
- `rank` (no MOS, e.g. an unlabelled pool): 1 + 4·ECDF_train(score), flipped for lower-is-better
  annotators. It only assumes the annotator ranks items correctly.

Per item, the calibrated scores give a mean μ and a spread σ (std across annotators, floored at
`min_std`); the PMOD is that Gaussian integrated over the five level bins [k−½, k+½] (the outer bins
open-ended), i.e. a probability per level bad…excellent that sums to one. An item for which no
annotator produced a score gets NaN and is reported, never a made-up distribution.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import ndtr

from qualitune.errors import QualituneError
from qualitune.labels import LEVEL_WORDS
from qualitune.manifest import NORM_MAX, NORM_MIN, SPLITS

log = logging.getLogger(__name__)

LEVEL_COLUMNS = tuple(f"pmod_p{k}" for k in range(1, 6))


@dataclass
class Calibration:
    """A monotone map of one annotator's native score onto 1–5, fitted on the train split."""

    name: str
    method: str  # "isotonic" | "rank"
    higher_is_better: bool
    x: np.ndarray = field(repr=False)  # knots (sorted scores)
    y: np.ndarray = field(repr=False)  # values on 1–5 at the knots

    def apply(self, scores) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        out = np.interp(s, self.x, self.y)  # clips to the end values outside the knots
        out[~np.isfinite(s)] = np.nan
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "higher_is_better": self.higher_is_better,
            "x": self.x.tolist(),
            "y": self.y.tolist(),
        }


def fit_calibration(name: str, scores, mos_norm, higher_is_better: bool, max_knots: int = 256) -> Calibration:
    """Fit an annotator's calibration on training items (see module docstring for the two methods)."""
    s = np.asarray(scores, dtype=np.float64)
    m = None if mos_norm is None else np.asarray(mos_norm, dtype=np.float64)
    ok = np.isfinite(s) if m is None else np.isfinite(s) & np.isfinite(m)
    if ok.sum() < 2:
        raise QualituneError(f"annotator {name!r}: fewer than 2 scored training items; cannot calibrate")
    s = s[ok]
    if m is not None:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(
            increasing=higher_is_better, y_min=NORM_MIN, y_max=NORM_MAX, out_of_bounds="clip"
        )
        iso.fit(s, m[ok])
        x, y = np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)
        method = "isotonic"
    else:
        x = np.unique(np.quantile(s, np.linspace(0, 1, min(max_knots, s.size))))
        # share of training scores below each knot, spread over [0, 1] so the best item maps to 5
        ecdf = np.clip(np.searchsorted(np.sort(s), x, side="left") / max(s.size - 1, 1), 0.0, 1.0)
        y = NORM_MIN + (NORM_MAX - NORM_MIN) * (ecdf if higher_is_better else 1.0 - ecdf)
        method = "rank"
    if x.size == 1:  # a constant annotator: a flat map at its value
        x, y = np.array([x[0] - 1.0, x[0] + 1.0]), np.array([y[0], y[0]])
    return Calibration(name, method, higher_is_better, x, y)


def level_probabilities(mean, std, min_std: float = 0.25) -> np.ndarray:
    """A Gaussian N(mean, max(std, min_std)) integrated over the five level bins → (n, 5), rows sum to 1."""
    mu = np.asarray(mean, dtype=np.float64)[:, None]
    sd = np.maximum(np.asarray(std, dtype=np.float64), min_std)[:, None]
    edges = np.array([-np.inf, 1.5, 2.5, 3.5, 4.5, np.inf])
    cdf = ndtr((edges[None, :] - mu) / sd)
    return np.diff(cdf, axis=1)


@dataclass
class PmodResult:
    frame: pd.DataFrame
    calibrations: dict[str, Calibration]
    n_unscored: int


def compute_pmod(
    manifest: pd.DataFrame,
    annotations: pd.DataFrame,
    directions: dict[str, bool],
    *,
    min_std: float = 0.25,
    use_mos: bool = True,
) -> PmodResult:
    """Join annotator scores onto the manifest (by `path`), calibrate on train, add PMOD columns.

    Adds `ann_<name>` (native score), `cal_<name>` (on 1–5), `pmod_mean`, `pmod_std`, `pmod_n`
    (how many annotators scored the item) and `pmod_p1`…`pmod_p5`.
    """
    names = list(directions)
    missing = [n for n in names if n not in annotations.columns]
    if missing:
        raise QualituneError(f"annotation table lacks columns {missing}; it has {list(annotations.columns)}")
    ann = annotations.drop_duplicates("path", keep="last").set_index("path")
    unknown = ~manifest["path"].isin(ann.index)
    if unknown.any():
        raise QualituneError(
            f"{int(unknown.sum())} manifest items have no annotation row (e.g. {manifest.loc[unknown, 'path'].iloc[0]}); "
            "re-run the annotate stage on this manifest"
        )
    out = manifest.copy()
    train = (out["split"] == "train").to_numpy()
    if not train.any():
        raise QualituneError("the manifest has no train split; PMOD calibration is fitted on train items")
    cals: dict[str, Calibration] = {}
    cal_cols = []
    for n in names:
        native = ann.loc[out["path"], n].to_numpy(dtype=np.float64)
        out[f"ann_{n}"] = native
        mos = out["mos_norm"].to_numpy()[train] if use_mos else None
        cals[n] = fit_calibration(n, native[train], mos, directions[n])
        out[f"cal_{n}"] = cals[n].apply(native)
        cal_cols.append(f"cal_{n}")
    cal = out[cal_cols].to_numpy()
    n_ok = np.isfinite(cal).sum(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: handled just below
        mean = np.nanmean(cal, axis=1)
        std = np.nanstd(cal, axis=1)
    out["pmod_n"] = n_ok
    out["pmod_mean"] = np.where(n_ok > 0, mean, np.nan)
    out["pmod_std"] = np.where(n_ok > 0, std, np.nan)
    probs = level_probabilities(np.nan_to_num(mean, nan=3.0), np.nan_to_num(std), min_std)
    probs[n_ok == 0] = np.nan  # no annotator scored it: no distribution, not a guess
    for k, col in enumerate(LEVEL_COLUMNS):
        out[col] = probs[:, k]
    n_unscored = int((n_ok == 0).sum())
    if n_unscored:
        log.warning("%d items have no annotator score at all; their PMOD is NaN", n_unscored)
    return PmodResult(out, cals, n_unscored)


def _corr(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return {"srcc": float("nan"), "plcc": float("nan"), "n": int(ok.sum())}
    return {
        "srcc": float(stats.spearmanr(a[ok], b[ok]).statistic),
        "plcc": float(stats.pearsonr(a[ok], b[ok]).statistic),
        "n": int(ok.sum()),
    }


def correlation_report(
    frame: pd.DataFrame, directions: dict[str, bool]
) -> dict[str, dict[str, dict[str, float]]]:
    """SRCC/PLCC against mos_norm per split: each annotator's native score with its sign made
    "higher = better" (so +0.6 means agreement whatever the annotator's direction), and the PMOD mean."""
    rep: dict[str, dict[str, dict[str, float]]] = {}
    for split in [s for s in SPLITS if (frame["split"] == s).any()]:
        part = frame[frame["split"] == split]
        mos = part["mos_norm"].to_numpy(dtype=np.float64)
        rep[split] = {}
        for n, hib in directions.items():
            sign = 1.0 if hib else -1.0
            rep[split][n] = _corr(sign * part[f"ann_{n}"].to_numpy(dtype=np.float64), mos)
        rep[split]["pmod_mean"] = _corr(part["pmod_mean"].to_numpy(dtype=np.float64), mos)
    return rep


# Attribute descriptions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    """How one annotator becomes a phrase: which end of its (train) distribution is bad, and the words."""

    annotator: str
    bad_when_high: bool
    phrases: tuple[str, str, str]  # (good, mild, strong)


def describe(
    frame: pd.DataFrame, descriptors: list[Descriptor], train_mask: np.ndarray, qs=(0.67, 0.9)
) -> list[str]:
    """One short sentence per item, e.g. "strong blur, mild noise, well exposed, dull colours".

    Severity is relative to the training distribution: beyond the `qs[1]` quantile on the bad side
    is "strong", beyond `qs[0]` is "mild", else the good phrase. Relative thresholds make the words
    mean the same on any dataset; the numbers behind them are kept in the `ann_*` columns.
    """
    parts: list[list[str]] = [[] for _ in range(len(frame))]
    for d in descriptors:
        col = f"ann_{d.annotator}"
        if col not in frame.columns:
            continue
        v = frame[col].to_numpy(dtype=np.float64)
        badness = v if d.bad_when_high else -v
        ref = badness[train_mask & np.isfinite(badness)]
        if ref.size < 2:
            continue
        mild, strong = np.quantile(ref, qs)
        for i, b in enumerate(badness):
            if not np.isfinite(b):
                continue
            parts[i].append(d.phrases[2] if b > strong else d.phrases[1] if b > mild else d.phrases[0])
    return [", ".join(p) if p else "" for p in parts]


def level_word(mean: float) -> str:
    """The level word nearest a mean on 1–5 (used in text targets)."""
    return LEVEL_WORDS[int(np.clip(np.floor(mean + 0.5), 1, 5)) - 1]


# The phrases used for attribute descriptions (two-stage training, VITAL's text task). Each names the
# fast annotator that measures it; exposure and colourfulness read "bad" at the low end.
DEFAULT_DESCRIPTORS: list[Descriptor] = [
    Descriptor("blur", True, ("sharp", "mild blur", "strong blur")),
    Descriptor("noise", True, ("clean", "mild noise", "strong noise")),
    Descriptor("blockiness", True, ("no compression artefacts", "mild blocking", "strong blocking")),
    Descriptor("exposure", False, ("well exposed", "slightly off exposure", "badly exposed")),
    Descriptor("contrast", False, ("good contrast", "low contrast", "very low contrast")),
    Descriptor("colourfulness", False, ("vivid colours", "muted colours", "dull colours")),
]


def run_pmod(
    manifest_path: str | Path,
    annotations_path: str | Path,
    annotators: list[str],
    *,
    out: str | Path,
    calibration: str = "isotonic",
    min_std: float = 0.25,
    metrics: str | Path | None = None,
    calibrations: str | Path | None = None,
    plot_correlations: str | Path | None = None,
    plot_scatter: str | Path | None = None,
    plot_calibration: str | Path | None = None,
    calibration_png: str | Path | None = None,
) -> dict:
    """Files in, files out: the `pmod` stage and the `qualitune pmod` command both call this.

    Writes the manifest with PMOD columns and descriptions to `out`, and, when given, the metrics
    (SRCC/PLCC per split), the fitted calibrations, the plot tables and the calibration curves (a
    table for `dvc plots`, a PNG for MLflow). Returns the report.
    """
    from qualitune.annotators import get_annotator
    from qualitune.manifest import manifest_metadata, read_manifest, write_manifest

    if calibration not in ("isotonic", "rank"):
        raise QualituneError(f"pmod calibration must be 'isotonic' or 'rank', got {calibration!r}")
    manifest = read_manifest(manifest_path)
    annotations = pd.read_csv(annotations_path)
    directions = {n: bool(get_annotator(n).higher_is_better) for n in annotators}
    res = compute_pmod(manifest, annotations, directions, min_std=min_std, use_mos=calibration == "isotonic")
    frame = res.frame
    frame["description"] = describe(frame, DEFAULT_DESCRIPTORS, (frame["split"] == "train").to_numpy())
    meta = manifest_metadata(manifest_path) | {"pmod": {"calibration": calibration, "annotators": annotators}}
    write_manifest(frame, out, meta)

    report = correlation_report(frame, directions)
    if metrics:
        summary = {
            s: {k: {m: v[m] for m in ("srcc", "plcc")} for k, v in per.items()} for s, per in report.items()
        }
        _write_json(metrics, {"pmod": summary, "n_unscored": res.n_unscored})
    if calibrations:
        _write_json(calibrations, {n: c.to_dict() for n, c in res.calibrations.items()})
    if plot_calibration or calibration_png:
        from qualitune import plots

        curves = plots.calibration_table({n: c.to_dict() for n, c in res.calibrations.items()})
        if plot_calibration:
            _write_csv(plot_calibration, curves)
        if calibration_png:
            plots.calibration_curves(curves, calibration_png)
    if plot_correlations:
        rows = [{"split": s, "annotator": k, **v} for s, per in report.items() for k, v in per.items()]
        _write_csv(plot_correlations, pd.DataFrame(rows))
    if plot_scatter:
        scatter = frame[["item_id", "split", "mos_norm", "pmod_mean", "pmod_std"]]
        _write_csv(plot_scatter, scatter[np.isfinite(scatter["pmod_mean"])])
    for split, per in report.items():  # per annotator: in the metrics file and the plot
        log.debug(
            "pmod SRCC vs MOS [%s]: %s", split, ", ".join(f"{k} {v['srcc']:+.3f}" for k, v in per.items())
        )
    mean = ", ".join(
        f"{s} {per['pmod_mean']['srcc']:+.3f}" for s, per in report.items() if "pmod_mean" in per
    )
    best = max(
        ((k, v["srcc"]) for k, v in report.get("train", {}).items() if k != "pmod_mean"),
        key=lambda kv: abs(kv[1]) if np.isfinite(kv[1]) else -1,
        default=None,
    )
    print(
        f"pmod: {len(frame)} items, {len(annotators)} annotators; PMOD-mean SRCC vs MOS {mean}"
        + (f"; best single annotator on train: {best[0]} {best[1]:+.3f}" if best else "")
    )
    if res.n_unscored:
        print(
            f"pmod: {res.n_unscored} items had no annotator score; their PMOD is NaN (see the annotations' error column)"
        )
    return report


def _write_json(path: str | Path, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def _write_csv(path: str | Path, df: pd.DataFrame) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
