"""What a scorer must beat: a linear probe on its frozen encoder, and the machine annotators' PMOD mean.

Every evaluation reports both beside the VLM, on the same items, so a run shows its gain over what
the pretrained encoder already knows (a ridge regression on its pooled features) and over what the
classic no-reference annotators already give (the PMOD mean, calibrated on the train split).

- **Linear probe**: ridge regression from the encoder's pooled features to `mos_norm`, features
  standardised on train and fitted on train only, the penalty chosen by val SRCC from a log grid.
  Not refitted on train + val: the VLM never trains on val, and a refit would make the probe's val
  figure an in-sample one (on the demo it read 0.845 where the train-only fit reads 0.569). The
  compact backend's features are EfficientNet-Lite0's head channel means (the first 1,280
  dimensions of its global vector); a Qwen vision tower's are the mean of its output tokens.
  Videos: the mean over their sampled frames.
- **PMOD mean**: the `pmod_mean` column the `pmod` stage wrote (on 1-5).
- **Anchor probe** (compact scorers with a quality anchor, `qualitune.vlm.backends.compact.anchor`):
  the ridge probe on the whole global feature vector that the scorer's anchor token carries. It is
  part of the VLM's input, so the VLM's gain over it is what the decoder adds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from qualitune.errors import QualituneError
from qualitune.metrics import correlations

log = logging.getLogger(__name__)

ALPHAS = tuple(10.0 ** np.arange(-1, 8))
"""The ridge penalties tried (chosen by val SRCC). Up to 1e7: on 4,000 BIQ2021 photos the best was
1e4, the top of the earlier grid, so the grid did not show the probe at its best."""


def _is_compact(model: torch.nn.Module) -> bool:
    from qualitune.vlm.backends.compact.modeling import is_compact

    return is_compact(model)


def _visual(model: torch.nn.Module) -> torch.nn.Module:
    from qualitune.vlm.unwrap import unwrap_model

    return unwrap_model(model).model.visual


@torch.no_grad()
def _image_features(
    model: torch.nn.Module, processor, images: list, global_vector: bool = False
) -> np.ndarray:
    """One pooled feature vector per PIL image (the compact backend's whole global vector with
    `global_vector`: what its quality anchor reads)."""
    if _is_compact(model):
        pixels = torch.from_numpy(processor(images)["pixel_values"])
        from qualitune.vlm.backends.compact.efficientnet import HEAD_CHANNELS

        glob, _ = _visual(model).features(pixels)
        return glob.float().numpy() if global_vector else glob[:, :HEAD_CHANNELS].float().numpy()
    if global_vector:
        raise QualituneError("the global feature vector is the compact backend's")
    from qualitune.vlm.unwrap import unwrap_model

    inner = unwrap_model(model).model
    out = []
    for im in images:  # one at a time: Qwen's patch sequences differ in length per image
        enc = processor(images=[im], return_tensors="pt")
        device = next(inner.parameters()).device
        feats = inner.get_image_features(
            enc["pixel_values"].to(device, dtype=next(inner.visual.parameters()).dtype),
            enc["image_grid_thw"].to(device),
        )
        tokens = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        tokens = tokens[0] if isinstance(tokens, list | tuple) else tokens
        out.append(tokens.float().mean(dim=0).cpu().numpy())
    return np.stack(out)


def pooled_features(
    model: torch.nn.Module,
    processor,
    paths: Sequence[str],
    *,
    n_frames: int = 2,
    batch_size: int = 16,
    global_vector: bool = False,
    on_progress=None,
) -> tuple[np.ndarray, list[str | None]]:
    """`(features, errors)`: a row per path (NaN where the file cannot be read) and the reason or None.

    A bad file never stops the pass: it gets a NaN row and its error, and the probe leaves it out."""
    from qualitune.media import MediaError, load_media

    rows: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        frames, owners = [], []
        for i, p in enumerate(chunk):
            try:
                loaded = load_media(p, n_frames=n_frames)
            except (MediaError, OSError, ValueError) as exc:
                rows.append(None)
                errors.append(str(exc))
                continue
            rows.append(np.empty(0))
            errors.append(None)
            frames += loaded
            owners += [start + i] * len(loaded)
        if frames:
            feats = _image_features(model, processor, frames, global_vector)
            owners_arr = np.asarray(owners)
            for idx in np.unique(owners_arr):
                rows[idx] = feats[owners_arr == idx].mean(axis=0)
        if on_progress is not None:
            on_progress(min(start + batch_size, len(paths)), len(paths))
    dim = next((r.shape[0] for r in rows if r is not None and r.size), 0)
    out = np.full((len(paths), dim), np.nan, dtype=np.float64)
    for i, r in enumerate(rows):
        if r is not None and r.size:
            out[i] = r
    return out, errors


@dataclass(frozen=True)
class Probe:
    """A fitted linear probe: predictions for every row, the chosen penalty and its val SRCC, and
    the fit itself in the input features' space (`features @ coef + intercept`)."""

    predictions: np.ndarray
    alpha: float
    val_srcc: float
    n_train: int
    coef: np.ndarray
    intercept: float


def linear_probe(features: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> Probe:
    """Ridge on standardised `features` fitted on the `train` rows, `alpha` chosen by SRCC on `val`;
    NaN predictions for rows whose features are NaN. The val rows only choose the penalty, as they
    only choose the VLM's checkpoint, so both are compared on items neither was fitted on."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    ok = np.isfinite(features).all(axis=1) & np.isfinite(y)
    tr, va = train & ok, val & ok
    if tr.sum() < 2 or va.sum() < 3:
        raise QualituneError(
            f"the linear probe needs >= 2 train and >= 3 val items with features and MOS, got "
            f"{int(tr.sum())} and {int(va.sum())}"
        )
    scaler = StandardScaler().fit(features[tr])
    xs = np.zeros_like(features)
    xs[ok] = scaler.transform(features[ok])
    best_rho, best_alpha, best_fit = -np.inf, ALPHAS[0], None
    for alpha in ALPHAS:
        fit = Ridge(alpha=alpha).fit(xs[tr], y[tr])
        rho = spearmanr(fit.predict(xs[va]), y[va]).statistic
        rho = -np.inf if not np.isfinite(rho) else float(rho)
        if best_fit is None or rho > best_rho:
            best_rho, best_alpha, best_fit = rho, float(alpha), fit
    fit = best_fit
    pred = np.full(len(y), np.nan)
    pred[ok] = fit.predict(xs[ok])
    coef = fit.coef_ / scaler.scale_  # the standardisation folded into the weights
    intercept = float(fit.intercept_ - np.dot(coef, scaler.mean_))
    return Probe(pred, best_alpha, best_rho, int(tr.sum()), coef, intercept)


def _pair(pred: np.ndarray, mos: np.ndarray) -> dict[str, float | int]:
    m = correlations([None if not np.isfinite(v) else float(v) for v in pred], list(mos))
    return {"srcc": m["srcc"], "plcc": m["plcc"], "n": m["n"]}


def baseline_metrics(
    df: pd.DataFrame,
    probe: np.ndarray | None,
    splits: Sequence[str],
    anchor: np.ndarray | None = None,
) -> dict[str, dict[str, dict[str, float | int]]]:
    """`{split: {"linear_probe": {srcc, plcc, n}, "pmod_mean": {...}[, "anchor_probe": {...}]}}` over
    the rows of `df` (`probe` and `anchor` aligned with them; None leaves one out)."""
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    mos = df["mos_norm"].to_numpy(dtype=float)
    split = df["split"].astype(str).to_numpy()
    for s in splits:
        rows = split == s
        if not rows.any():
            continue
        block: dict[str, dict[str, float | int]] = {}
        if probe is not None:
            block["linear_probe"] = _pair(probe[rows], mos[rows])
        if "pmod_mean" in df.columns:
            block["pmod_mean"] = _pair(df["pmod_mean"].to_numpy(dtype=float)[rows], mos[rows])
        if anchor is not None:
            block["anchor_probe"] = _pair(anchor[rows], mos[rows])
        out[s] = block
    return out


ENCODER_TRAINING = ("encoder", "full")
"""Recipes (`train.tuning`) that change the vision encoder: their probe uses the base model's."""


def probe_encoder(scorer) -> tuple[torch.nn.Module, object]:
    """`(model, image processor)` whose frozen encoder the probe reads: the scorer's own when its
    recipe left the encoder untouched (the default), else a fresh copy of the base model's."""
    if scorer.spec.recipe.get("tuning") not in ENCODER_TRAINING:
        return scorer.model, scorer.image_processor
    from qualitune.vlm.model import load_model, make_processor

    base, _ = load_model(scorer.spec.base_model, seed=scorer.spec.base_seed)
    base.eval()
    return base, make_processor(base, scorer.spec.min_pixels, scorer.spec.max_pixels)


def evaluate_baselines(
    scorer, df: pd.DataFrame, splits: Sequence[str], *, batch_size: int = 16, on_progress=None
) -> tuple[dict, dict]:
    """The baselines for the `splits` of manifest `df` (train and val rows fit the probe):
    `(metrics per split, probe info)`; the probe is left out, with the reason, when the manifest
    has too few train/val items with features. A compact scorer with a quality anchor also gets
    `anchor_probe`: the predictions of the probe its anchor token carries (fitted before training
    on the whole global feature vector), so a run shows what the VLM adds to its own anchor."""
    from qualitune.vlm.backends.compact.efficientnet import HEAD_CHANNELS

    model, processor = probe_encoder(scorer)
    anchor = _visual(scorer.model).merger.anchor if _is_compact(scorer.model) else None
    paths = df["path"].astype(str).tolist()

    def features(m, proc, whole: bool, progress=None):
        return pooled_features(
            m, proc, paths, n_frames=scorer.spec.n_frames, batch_size=batch_size,
            global_vector=whole, on_progress=progress,
        )  # fmt: skip

    whole = anchor is not None and model is scorer.model  # one pass serves both probes
    feats, errors = features(model, processor, whole, on_progress)
    anchor_pred = None
    if anchor is not None:
        g = feats if whole else features(scorer.model, scorer.image_processor, True)[0]
        with torch.no_grad():
            anchor_pred = anchor.probe_scores(torch.from_numpy(g)).double().numpy()
        anchor_pred[~np.isfinite(g).all(axis=1)] = np.nan
    if whole:
        feats = feats[:, :HEAD_CHANNELS]  # the linear probe reads the head's channel means
    split = df["split"].astype(str).to_numpy()
    y = df["mos_norm"].to_numpy(dtype=float)
    info: dict = {"unreadable": int(sum(e is not None for e in errors)), "feature_dim": int(feats.shape[1])}
    try:
        probe = linear_probe(feats, y, split == "train", split == "val")
    except ValueError as exc:
        log.warning("linear probe left out: %s", exc)
        info["skipped"] = str(exc)
        return baseline_metrics(df, None, splits, anchor_pred), info
    info.update(alpha=probe.alpha, val_srcc_at_alpha=probe.val_srcc, n_train=probe.n_train)
    return baseline_metrics(df, probe.predictions, splits, anchor_pred), info


__all__ = [
    "ALPHAS",
    "Probe",
    "baseline_metrics",
    "evaluate_baselines",
    "linear_probe",
    "pooled_features",
    "probe_encoder",
]
