"""The pipeline's pictures, as PNG files for the MLflow run page (DVC renders its own from the tables).

Every plot the stages declare in `dvc.yaml` has a table (CSV) that `dvc plots show/diff` draws with
its Vega-Lite templates (`.dvc/plots/`), and a PNG drawn here from the same table, logged to the
stage's MLflow run: the two views of one result never disagree. matplotlib runs headless (Agg).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    _pyplot().close(fig)


def logit_lens_heatmap(table: pd.DataFrame, path: str | Path, *, title: str) -> None:
    """Layer x token heatmap of mean probabilities (from `analysis.candidate_lens`)."""
    plt = _pyplot()
    pivot = table.pivot_table(index="layer", columns="token", values="prob", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1 + 0.8 * pivot.shape[1], 1 + 0.5 * pivot.shape[0]))
    im = ax.imshow(pivot.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(pivot.shape[1]), [repr(c) for c in pivot.columns])
    ax.set_yticks(range(pivot.shape[0]), pivot.index)
    ax.set_xlabel("answer token")
    ax.set_ylabel("layer (0 = embeddings)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="mean probability")
    _save(fig, path)


def attention_shares(table: pd.DataFrame, path: str | Path) -> None:
    """Share of the score position's attention on each input part, per layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for part, g in table.groupby("part"):
        ax.plot(g["layer"], g["share"], marker="o", label=part)
    ax.set_xlabel("layer")
    ax.set_ylabel("attention share at the score position")
    ax.set_ylim(0, 1)
    ax.legend()
    _save(fig, path)


def scatter_by_split(
    table: pd.DataFrame, path: str | Path, *, x: str = "mos_norm", y: str = "score_1_5"
) -> None:
    """Predicted vs MOS (both on 1-5), one panel per split, SRCC in each title."""
    from scipy.stats import spearmanr

    plt = _pyplot()
    splits = list(dict.fromkeys(table["split"]))
    fig, axes = plt.subplots(1, max(1, len(splits)), figsize=(4.2 * max(1, len(splits)), 4.2), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=False):
        g = table[table["split"] == split].dropna(subset=[x, y])
        ax.scatter(g[x], g[y], s=8, alpha=0.5)
        ax.plot([1, 5], [1, 5], color="grey", lw=0.8, ls="--")
        rho = spearmanr(g[x], g[y]).statistic if len(g) > 2 else float("nan")
        ax.set_title(f"{split}: n={len(g)}, SRCC {rho:.3f}")
        ax.set_xlabel("MOS (1-5)")
        ax.set_ylabel("predicted (1-5)")
        ax.set_xlim(0.9, 5.1)
        ax.set_ylim(0.9, 5.1)
    _save(fig, path)


def loss_curve(table: pd.DataFrame, path: str | Path) -> None:
    """Training loss per optimizer step, one line per phase (PMOD pre-training, then the recipe)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for phase, g in table.groupby("phase", sort=False):
        ax.plot(g["step"], g["loss"], lw=1, label=str(phase))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale(
        "log" if (table["loss"] > 0).all() and table["loss"].max() > 20 * table["loss"].min() else "linear"
    )
    ax.legend()
    _save(fig, path)


def calibration_table(calibrations: Mapping[str, Mapping[str, Any]], points: int = 50) -> pd.DataFrame:
    """Each annotator's calibration as a curve: raw score -> calibrated MOS (1-5), `points` per annotator."""
    rows = []
    for name, c in calibrations.items():
        xs, ys = np.asarray(c["x"], dtype=float), np.asarray(c["y"], dtype=float)
        if xs.size == 0:
            continue
        grid = np.linspace(xs.min(), xs.max(), points) if xs.size > 1 else xs
        rows += [
            {"annotator": name, "raw": float(g), "calibrated": float(v)}
            for g, v in zip(grid, np.interp(grid, xs, ys), strict=True)
        ]
    return pd.DataFrame(rows, columns=["annotator", "raw", "calibrated"])


def calibration_curves(table: pd.DataFrame, path: str | Path) -> None:
    """One small panel per annotator: its raw score against the calibrated MOS it maps to."""
    plt = _pyplot()
    names = list(dict.fromkeys(table["annotator"]))
    cols = min(5, max(1, len(names)))
    rows = -(-len(names) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names, strict=False):
        g = table[table["annotator"] == name]
        ax.plot(g["raw"], g["calibrated"], lw=1.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0.9, 5.1)
        ax.tick_params(labelsize=7)
    fig.supxlabel("annotator's raw score")
    fig.supylabel("calibrated MOS (1-5)")
    _save(fig, path)


__all__ = [
    "attention_shares",
    "calibration_curves",
    "calibration_table",
    "logit_lens_heatmap",
    "loss_curve",
    "scatter_by_split",
]
