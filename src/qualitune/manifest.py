"""The canonical manifest: one row per media item, whatever dataset it came from.

Every later stage (validation, labels, PMOD, training, evaluation) reads this table and nothing
else, so the adapters' only job is to produce it faithfully. Scores are kept on their source scale
(`mos`, `mos_std`, with `scale_min`/`scale_max` recorded per row so manifests of several datasets can
be concatenated) and mapped linearly onto 1–5 as `mos_norm`, higher always meaning better.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError

SPLITS = ("train", "val", "test")
MEDIA_KINDS = ("image", "video")
NORM_MIN, NORM_MAX = 1.0, 5.0

# column -> pandas dtype of the canonical manifest; extra (attribute) columns are kept after these.
COLUMNS: dict[str, str] = {
    "item_id": "string",
    "path": "string",
    "media": "string",
    "mos": "float64",
    "mos_std": "float64",  # nullable: NaN where the dataset publishes no spread
    "mos_norm": "float64",
    "split": "string",
    "dataset": "string",
    "scale_min": "float64",
    "scale_max": "float64",
}
REQUIRED = tuple(COLUMNS)


def normalize_mos(
    mos: np.ndarray | pd.Series, scale: tuple[float, float], higher_is_better: bool = True
) -> np.ndarray:
    """Linear map of `mos` from its source scale [lo, hi] onto [1, 5]; flipped when lower is better.

    Values outside the source scale are mapped, not clipped: the validation gate must see them.
    """
    lo, hi = float(scale[0]), float(scale[1])
    if not hi > lo:
        raise QualituneError(f"scale must satisfy min < max, got [{lo}, {hi}]")
    x = (np.asarray(mos, dtype=np.float64) - lo) / (hi - lo)
    if not higher_is_better:
        x = 1.0 - x
    return NORM_MIN + (NORM_MAX - NORM_MIN) * x


def normalize_std(std: np.ndarray | pd.Series, scale: tuple[float, float]) -> np.ndarray:
    """A standard deviation on the source scale, expressed on the 1–5 scale (scales, no shift)."""
    lo, hi = float(scale[0]), float(scale[1])
    return np.asarray(std, dtype=np.float64) * (NORM_MAX - NORM_MIN) / (hi - lo)


def make_manifest(
    frame: pd.DataFrame,
    *,
    dataset: str,
    scale: tuple[float, float],
    higher_is_better: bool = True,
    std_scale: tuple[float, float] | None = None,
) -> pd.DataFrame:
    """Build a canonical manifest from a frame holding at least `name`, `path`, `mos` and `split`.

    Optional columns: `mos_std` (on the source scale), `media` (else guessed from the extension).
    Any other column is kept as an attribute. `item_id` is "<dataset>/<name>", unique per dataset.
    """
    from qualitune.media import MediaError, media_kind

    missing = {"name", "path", "mos", "split"} - set(frame.columns)
    if missing:
        raise QualituneError(f"adapter frame lacks columns {sorted(missing)}")
    df = frame.copy()
    df["item_id"] = dataset + "/" + df["name"].astype(str)
    if "media" not in df.columns:

        def kind(p: str) -> str:
            try:
                return media_kind(p)
            except MediaError:
                return "unknown"  # kept; the validation gate quarantines it with a reason

        df["media"] = [kind(p) for p in df["path"].astype(str)]
    raw_mos = df["mos"]
    df["mos"] = pd.to_numeric(raw_mos, errors="coerce")  # unparseable -> NaN -> quarantined later
    # The label file's own text of a MOS that did not parse ("abc", "4,5"), so the quarantine can
    # show it: after the coercion it would only read "missing". Added only when there is one.
    unparsed = df["mos"].isna() & raw_mos.notna() & (raw_mos.astype(str).str.strip() != "")
    if unparsed.any():
        df["mos_raw"] = raw_mos.astype(str).where(unparsed, None)
    if "mos_std" in df.columns:
        df["mos_std"] = pd.to_numeric(df["mos_std"], errors="coerce")
    else:
        df["mos_std"] = np.nan
    df["mos_norm"] = normalize_mos(df["mos"], scale, higher_is_better)
    df["dataset"] = dataset
    df["scale_min"] = float(scale[0])
    df["scale_max"] = float(scale[1])
    df = df.drop(columns=["name"])
    extras = [c for c in df.columns if c not in COLUMNS]
    df = df[list(COLUMNS) + extras]
    return df.astype({c: t for c, t in COLUMNS.items()}).reset_index(drop=True)


def write_manifest(df: pd.DataFrame, path: str | Path, metadata: Mapping[str, object] | None = None) -> Path:
    """Write a manifest as parquet, with free-form provenance (source scale, format…) in its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = set(REQUIRED) - set(df.columns)
    if missing:
        raise QualituneError(f"manifest lacks required columns {sorted(missing)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"qualitune"] = json.dumps(dict(metadata or {}), default=str).encode()
    pq.write_table(table.replace_schema_metadata(meta), out)
    return out


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest and check it has the canonical columns."""
    p = Path(path)
    if not p.is_file():
        raise QualituneError(f"manifest not found: {p}")
    try:
        df = pd.read_parquet(p)
    except Exception as exc:
        raise QualituneError(f"{p}: not a readable parquet manifest ({exc})") from exc
    missing = set(REQUIRED) - set(df.columns)
    if missing:
        raise QualituneError(f"{p}: manifest lacks required columns {sorted(missing)}")
    return df


def manifest_metadata(path: str | Path) -> dict:
    """The provenance stored by `write_manifest` (empty if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"qualitune")
    return json.loads(raw) if raw else {}
