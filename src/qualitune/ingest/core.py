"""The shared reader core: what every dataset reader uses to turn its files into rows.

A reader (one module per published layout, `qualitune.ingest.<format>`) only knows its own file
names and columns; finding files (`_Resolver`), reading label tables and their columns, typing
attributes, parsing splits, booleans and scales, and assembling the frame (`_frame`) into an
`Adapted` result are here once, so every dataset gets the same guarantees. The underscored names
are internal to the `qualitune.ingest` package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError
from qualitune.manifest import COLUMNS, SPLITS
from qualitune.media import FileIndex

# What datasets and users write for the three splits; anything else is an error, not a guess.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

# Columns an adapter produces itself; a source column with one of these names is kept as "src_<name>".
_RESERVED = frozenset(COLUMNS) | {"name", "path_error", "mos_raw"}


@dataclass
class Adapted:
    """What an adapter hands back: the rows and the facts needed to normalise and document them.

    `frame` holds `name`, `path` (a Path), `mos`, `_found` (bool), optionally `mos_std`, `media` and
    `split` (official split, already normalised; NA where the dataset gives none), plus attributes.
    """

    frame: pd.DataFrame
    scale: tuple[float, float]
    higher_is_better: bool = True
    groups: list[str] | None = None  # content groups for the seeded split (KADID: reference image)
    labels: list[str] = field(default_factory=list)  # the label files read
    dropped: list[dict[str, Any]] = field(default_factory=list)  # conventional drops: count and reason
    dropped_columns: list[str] = field(default_factory=list)
    resolved_by_stem: int = 0


class _Resolver:
    """Finds a label's file under one or more candidate folders, one cached `FileIndex` per folder.

    Names may carry a relative subfolder ("ia-batch1/xyz", "videos/clip01.mp4") or be absolute. A
    name whose extension differs from the file on disk ("a.png" listed, "a.jpg" stored) is matched by
    stem as a last resort and counted, so the substitution is visible in the logs and metadata.
    """

    def __init__(self, bases: Sequence[Path], default_ext: str | None = None):
        if not bases:
            raise QualituneError("a resolver needs at least one folder")
        self.bases = [Path(b) for b in bases]
        self.default_ext = default_ext
        self.by_stem = 0
        self._indexes: dict[Path, FileIndex] = {}

    def _index(self, directory: Path) -> FileIndex:
        idx = self._indexes.get(directory)
        if idx is None:
            idx = self._indexes[directory] = FileIndex(directory)
        return idx

    def _candidates(self, name: str) -> list[tuple[Path, str]]:
        rel = PurePosixPath(name.replace("\\", "/"))
        if Path(name).is_absolute():
            return [(Path(name).parent, Path(name).name)]
        return [(base / rel.parent, rel.name) for base in self.bases]

    def find(self, name: str) -> tuple[Path, bool]:
        """(path, found): the file if it exists, else the path where it was expected."""
        candidates = self._candidates(name)
        for directory, leaf in candidates:
            idx = self._index(directory)
            hit = None
            if self.default_ext and not leaf.lower().endswith(self.default_ext.lower()):
                hit = idx.find(leaf + self.default_ext)
            hit = hit or idx.find(leaf)
            if hit is not None:
                return hit, True
        for directory, leaf in candidates:
            stem = PurePosixPath(leaf).stem
            if stem != leaf:
                hit = self._index(directory).find(stem)
                if hit is not None:
                    self.by_stem += 1
                    return hit, True
        directory, leaf = candidates[0]
        if self.default_ext and not PurePosixPath(leaf).suffix:
            leaf += self.default_ext
        return directory / leaf, False

    def resolve_all(self, names: Sequence[str]) -> tuple[list[Path], list[bool]]:
        found = [self.find(n) for n in names]
        return [p for p, _ in found], [ok for _, ok in found]


def _existing_dirs(*candidates: Path) -> list[Path]:
    """The candidate folders that exist, or the first one (where files would be expected) if none does."""
    dirs = [c for c in candidates if c.is_dir()]
    return dirs or [candidates[0]]


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        parent = path.parent
        listing = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
        hint = f"; {parent} contains {listing}" if parent.is_dir() else f"; folder {parent} does not exist"
        raise QualituneError(f"{what} not found: {path}{hint}")
    return path


def _clean_columns(df: pd.DataFrame) -> pd.DataFrame:
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _read_table(path: Path, what: str = "labels file") -> pd.DataFrame:
    """Read a CSV or Excel label table with every cell as text (names like "001" stay "001")."""
    _require_file(path, what)
    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            df = pd.read_excel(path, dtype=str)
        else:
            df = pd.read_csv(path, dtype=str, encoding="utf-8-sig", keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise QualituneError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
    if df.empty:  # a header only: with another file of the dataset this would silently drop a split
        raise QualituneError(f"{path}: the {what} has no rows (columns {list(df.columns)}); is it cut short?")
    return _clean_columns(df)


def _column(df: pd.DataFrame, name: str, source: Path, required: bool = True) -> str | None:
    """The actual column for `name` (exact, else case- and space-insensitive), or a helpful error."""
    if name in df.columns:
        return name
    key = name.strip().lower()
    for col in df.columns:
        if col.lower() == key:
            return col
    if required:
        raise QualituneError(f"{source}: missing column {name!r}; the file has columns {list(df.columns)}")
    return None


def _names(series: pd.Series) -> list[str]:
    return ["" if pd.isna(v) else str(v).strip() for v in series]


def _numeric_or_text(series: pd.Series) -> pd.Series:
    """Attributes read as text become numbers when every value parses (vote counts, sub-scores)."""
    try:
        return pd.to_numeric(series)
    except (ValueError, TypeError):
        return series


def _attributes(source: pd.DataFrame, consumed: Sequence[str | None]) -> tuple[pd.DataFrame, list[str]]:
    """The source columns not consumed as name/MOS/std/split, typed, renamed away from canonical names.

    pandas' "Unnamed: N" index columns and list-valued columns (not scalar attributes) are left out
    and reported.
    """
    used = {c for c in consumed if c}
    keep: dict[str, pd.Series] = {}
    skipped: list[str] = []
    for col in source.columns:
        if col in used:
            continue
        values = source[col]
        text = values.dropna().astype(str).str.strip()
        if re.fullmatch(r"Unnamed: \d+", col) or (len(text) and text.str.match(r"^[\[{].*[\]}]$").all()):
            skipped.append(col)
            continue
        out = f"src_{col}" if col in _RESERVED else col
        keep[out] = _numeric_or_text(values).reset_index(drop=True)
    return pd.DataFrame(keep, index=range(len(source))), skipped


def normalize_split_values(values: pd.Series, source: str, allow_missing: bool = False) -> pd.Series:
    """Map split labels onto train/val/test; raise listing every value that is not a known alias."""
    out = []
    bad: set[str] = set()
    for v in values:
        if pd.isna(v) or str(v).strip() == "":
            if allow_missing:
                out.append(pd.NA)
                continue
            bad.add("<empty>")
            out.append(pd.NA)
            continue
        key = str(v).strip().lower()
        if key not in SPLIT_ALIASES:
            bad.add(str(v))
        out.append(SPLIT_ALIASES.get(key, pd.NA))
    if bad:
        raise QualituneError(
            f"{source}: unknown split value(s) {sorted(bad)}; use one of {sorted(SPLIT_ALIASES)} "
            f"(mapped onto {list(SPLITS)})"
        )
    return pd.Series(out, dtype="object", index=values.index)


def _parse_bool(values: pd.Series, source: str) -> np.ndarray:
    truthy, falsy = {"true", "1", "1.0", "yes", "t", "y"}, {"false", "0", "0.0", "no", "f", "n"}
    out, bad = [], set()
    for v in values:
        key = "" if pd.isna(v) else str(v).strip().lower()
        if key in truthy:
            out.append(True)
        elif key in falsy:
            out.append(False)
        else:
            bad.add(str(v))
            out.append(False)
    if bad:
        raise QualituneError(f"{source}: values {sorted(bad)} are not booleans (use True/False or 1/0)")
    return np.asarray(out, dtype=bool)


def _as_scale(scale: Any) -> tuple[float, float]:
    if scale is None:
        raise QualituneError(
            "option 'scale' is required: the source MOS range as (min, max), e.g. --scale 1 5"
        )
    if isinstance(scale, str):
        scale = scale.replace(",", " ").split()
    try:
        lo, hi = (float(x) for x in scale)
    except (TypeError, ValueError) as exc:
        raise QualituneError(f"scale must be two numbers (min, max), got {scale!r}") from exc
    if not hi > lo:
        raise QualituneError(f"scale must satisfy min < max, got [{lo}, {hi}]")
    return lo, hi


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("true", "1", "yes"):
        return True
    if key in ("false", "0", "no"):
        return False
    raise QualituneError(f"option {name!r} must be true or false, got {value!r}")


def _frame(
    names: Sequence[str],
    paths: Sequence[Path],
    found: Sequence[bool],
    mos: Any,
    *,
    std: Any = None,
    split: Any = None,
    media: Any = None,
    attributes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    n = len(names)
    cols: dict[str, Any] = {"name": list(names), "path": list(paths), "_found": list(found)}
    cols["mos"] = pd.Series(mos).reset_index(drop=True) if mos is not None else np.nan
    cols["mos_std"] = pd.Series(std).reset_index(drop=True) if std is not None else np.nan
    cols["split"] = (
        pd.Series(split, dtype="object").reset_index(drop=True) if split is not None else [pd.NA] * n
    )
    if media is not None:
        cols["media"] = media
    df = pd.DataFrame(cols, index=range(n))
    if attributes is not None and len(attributes.columns):
        df = pd.concat([df, attributes.reset_index(drop=True)], axis=1)
    return df
