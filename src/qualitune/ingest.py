"""Dataset adapters: each public quality dataset's own files, as published, into the canonical manifest.

Every dataset ships its labels differently (CSV, Excel, MATLAB cells, two files for two splits, names
without extensions, names in subfolders) and its media with small disagreements against the labels
(".JPG" on disk for ".jpg" in the table, spaces and parentheses in names). An adapter's only job is
to read one layout faithfully; everything shared (finding files, splits, paths, provenance) lives
here once, so every dataset gets the same guarantees:

- no row is ever dropped silently: a label whose file is missing keeps its expected path and the
  validation gate quarantines it; an unparseable MOS becomes NaN for the same reason; the only
  conventional drop (LIVE Challenge's seven training images t1–t7) is logged and recorded;
- official splits are kept; otherwise a hash-seeded split (grouped by content where a dataset has
  several distortions of one reference) that does not move old items when new ones are added;
- the manifest's metadata records the format, the source scale and direction, the options and the
  counts, so a manifest can always be traced back to the files it came from.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from qualitune.manifest import COLUMNS, SPLITS, make_manifest, seeded_split, write_manifest
from qualitune.media import FileIndex, outside_root_errors

logger = logging.getLogger(__name__)

DEFAULT_SPLIT_RATIOS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}

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

# KADID-10k's 25 distortion types, by the number in "I01_<type>_<level>.png" (the dataset's own order).
KADID_DISTORTIONS: dict[int, str] = {
    1: "gaussian_blur",
    2: "lens_blur",
    3: "motion_blur",
    4: "color_diffusion",
    5: "color_shift",
    6: "color_quantization",
    7: "color_saturation_hsv",
    8: "color_saturation_lab",
    9: "jpeg2000",
    10: "jpeg",
    11: "white_noise",
    12: "white_noise_color_component",
    13: "impulse_noise",
    14: "multiplicative_noise",
    15: "denoise",
    16: "brighten",
    17: "darken",
    18: "mean_shift",
    19: "jitter",
    20: "non_eccentricity_patch",
    21: "pixelate",
    22: "quantization",
    23: "color_block",
    24: "high_sharpen",
    25: "contrast_change",
}


# --------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------


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
            raise ValueError("a resolver needs at least one folder")
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
        raise ValueError(f"{what} not found: {path}{hint}")
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
        raise ValueError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
    if df.empty:  # a header only: with another file of the dataset this would silently drop a split
        raise ValueError(f"{path}: the {what} has no rows (columns {list(df.columns)}); is it cut short?")
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
        raise ValueError(f"{source}: missing column {name!r}; the file has columns {list(df.columns)}")
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
        raise ValueError(
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
        raise ValueError(f"{source}: values {sorted(bad)} are not booleans (use True/False or 1/0)")
    return np.asarray(out, dtype=bool)


def _as_scale(scale: Any) -> tuple[float, float]:
    if scale is None:
        raise ValueError("option 'scale' is required: the source MOS range as (min, max), e.g. --scale 1 5")
    if isinstance(scale, str):
        scale = scale.replace(",", " ").split()
    try:
        lo, hi = (float(x) for x in scale)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scale must be two numbers (min, max), got {scale!r}") from exc
    if not hi > lo:
        raise ValueError(f"scale must satisfy min < max, got [{lo}, {hi}]")
    return lo, hi


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in ("true", "1", "yes"):
        return True
    if key in ("false", "0", "no"):
        return False
    raise ValueError(f"option {name!r} must be true or false, got {value!r}")


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


# --------------------------------------------------------------------------------------------------
# Adapters, one per published layout
# --------------------------------------------------------------------------------------------------


def read_koniq10k(root: Path, *, image_dir: str | None = None) -> Adapted:
    """KonIQ-10k: scores CSV (MOS, SD on 1–5), images in 1024x768/ else 512x384/, official `set` split."""
    labels = root / "koniq10k_scores_and_distributions.csv"
    sets = root / "koniq10k_distributions_sets.csv"
    if not labels.is_file() and sets.is_file():
        # The split file repeats image_name, c1-c5, MOS and SD: enough on its own.
        logger.info("koniq10k: %s not found; reading scores from %s", labels.name, sets)
        labels = sets
    df = _read_table(labels)
    name_c = _column(df, "image_name", labels)
    mos_c = _column(df, "MOS", labels)
    sd_c = _column(df, "SD", labels, required=False)
    names = _names(df[name_c])
    split = None
    files = [str(labels)]
    if sets.is_file():
        s = _read_table(sets, "split file")
        s_name, s_set = _column(s, "image_name", sets), _column(s, "set", sets)
        mapping = dict(zip(_names(s[s_name]), s[s_set], strict=True))
        split = normalize_split_values(
            pd.Series([mapping.get(n) for n in names]), f"{sets} column {s_set!r}", True
        )
        unmatched = int(split.isna().sum())
        if unmatched:
            logger.warning(
                "koniq10k: %d image(s) have no entry in %s; they get a seeded split", unmatched, sets
            )
        files = list(dict.fromkeys([*files, str(sets)]))
    else:
        logger.info("koniq10k: %s not found; using a seeded split", sets)
    bases = [root / image_dir] if image_dir else _existing_dirs(root / "1024x768", root / "512x384")
    resolver = _Resolver(bases[:1])  # one resolution only: never mix 1024x768 and 512x384 files
    paths, found = resolver.resolve_all(names)
    attrs, skipped = _attributes(df, [name_c, mos_c, sd_c, _column(df, "set", labels, required=False)])
    frame = _frame(
        names, paths, found, df[mos_c], std=df[sd_c] if sd_c else None, split=split, attributes=attrs
    )
    return Adapted(
        frame, scale=(1.0, 5.0), labels=files, dropped_columns=skipped, resolved_by_stem=resolver.by_stem
    )


def read_spaq(root: Path) -> Adapted:
    """SPAQ: Excel annotations (MOS 0–100 and five attribute scores), images in TestImage/."""
    name = "MOS and Image attribute scores.xlsx"
    labels = root / "Annotations" / name
    if not labels.is_file() and (root / name).is_file():
        labels = root / name
    df = _read_table(labels)
    name_c, mos_c = _column(df, "Image name", labels), _column(df, "MOS", labels)
    names = _names(df[name_c])
    resolver = _Resolver(_existing_dirs(root / "TestImage", root / "Dataset" / "TestImage"))
    paths, found = resolver.resolve_all(names)
    attrs, skipped = _attributes(df, [name_c, mos_c])
    frame = _frame(names, paths, found, df[mos_c], attributes=attrs)
    return Adapted(
        frame,
        scale=(0.0, 100.0),
        labels=[str(labels)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )


def _mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    _require_file(path, "MATLAB label file")
    try:
        data = loadmat(path)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc})") from exc
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: missing variable {key!r}; the file has {found}")
    return np.asarray(data[key]).ravel()


def _cell_text(cell: Any) -> str:
    """A MATLAB cell entry as loaded by scipy (a nested 1-element array) as plain text."""
    while isinstance(cell, np.ndarray):
        if cell.size == 0:
            return ""
        cell = cell.ravel()[0]
    return str(cell).strip()


LIVEC_TRAINING = frozenset(f"t{i}" for i in range(1, 8))


def read_livec(root: Path, *, keep_training_images: bool = False) -> Adapted:
    """LIVE Challenge: three .mat files (names cell, MOS 0–100, std); t1–t7 dropped by convention."""
    data = root / "Data"
    img_file, mos_file, std_file = (
        data / f"{k}.mat" for k in ("AllImages_release", "AllMOS_release", "AllStdDev_release")
    )
    names = [_cell_text(c) for c in _mat_vector(img_file, "AllImages_release")]
    mos = _mat_vector(mos_file, "AllMOS_release").astype(np.float64)
    std = _mat_vector(std_file, "AllStdDev_release").astype(np.float64) if std_file.is_file() else None
    if len(mos) != len(names) or (std is not None and len(std) != len(names)):
        raise ValueError(
            f"{data}: {len(names)} image names but {len(mos)} MOS"
            + ("" if std is None else f" and {len(std)} std values")
            + "; the three files must describe the same images"
        )
    if std is None:
        logger.warning("livec: %s not found; mos_std left empty", std_file)
    keep = np.ones(len(names), dtype=bool)
    dropped: list[dict[str, Any]] = []
    training = np.asarray([PurePosixPath(n).stem.lower() in LIVEC_TRAINING for n in names])
    if training.any() and not _as_bool(keep_training_images, "keep_training_images"):
        keep = ~training
        count = int(training.sum())
        reason = (
            "LIVE Challenge training images t1-t7 are conventionally excluded "
            f"({int(keep.sum())} of {len(names)} remain; the official release keeps 1,162)"
        )
        logger.warning("livec: dropped %d row(s): %s", count, reason)
        dropped.append(
            {
                "count": count,
                "reason": reason,
                "names": [n for n, t in zip(names, training, strict=True) if t],
            }
        )
    names = [n for n, k in zip(names, keep, strict=True) if k]
    mos = mos[keep]
    std = std[keep] if std is not None else None
    resolver = _Resolver(_existing_dirs(root / "Images") + [root / "Images" / "trainingImages"])
    paths, found = resolver.resolve_all(names)
    frame = _frame(names, paths, found, mos, std=std)
    files = [str(f) for f in (img_file, mos_file, std_file) if f.is_file()]
    return Adapted(
        frame, scale=(0.0, 100.0), labels=files, dropped=dropped, resolved_by_stem=resolver.by_stem
    )


_KADID_NAME = re.compile(r"^(I\d+)_(\d+)_(\d+)(\.\w+)?$", re.IGNORECASE)


def read_kadid10k(root: Path) -> Adapted:
    """KADID-10k: dmos.csv (1–5, higher is better; std = sqrt(var)); split grouped by reference image."""
    labels = root / "dmos.csv"
    df = _read_table(labels)
    dist_c, ref_c = _column(df, "dist_img", labels), _column(df, "ref_img", labels)
    mos_c, var_c = _column(df, "dmos", labels), _column(df, "var", labels, required=False)
    names = _names(df[dist_c])
    refs_col = _names(df[ref_c])
    ref, dist, level = [], [], []
    for n, r in zip(names, refs_col, strict=True):
        m = _KADID_NAME.match(PurePosixPath(n).name)
        ref.append(m.group(1).upper() if m else PurePosixPath(r).stem)
        dist.append(int(m.group(2)) if m else pd.NA)
        level.append(int(m.group(3)) if m else pd.NA)
    unparsed = sum(d is pd.NA for d in dist)
    if unparsed:
        logger.warning(
            "kadid10k: %d name(s) do not follow I<ref>_<type>_<level>; distortion left empty", unparsed
        )
    std = None
    if var_c:
        var = pd.to_numeric(df[var_c], errors="coerce")
        std = np.sqrt(var.where(var >= 0))
    resolver = _Resolver([root / "images"])
    paths, found = resolver.resolve_all(names)
    attrs, skipped = _attributes(df, [dist_c, mos_c])
    attrs.insert(0, "level", pd.array(level, dtype="Int64"))
    attrs.insert(
        0, "distortion_name", [KADID_DISTORTIONS.get(d, pd.NA) if d is not pd.NA else pd.NA for d in dist]
    )
    attrs.insert(0, "distortion", pd.array(dist, dtype="Int64"))
    attrs.insert(0, "ref", ref)
    frame = _frame(names, paths, found, df[mos_c], std=std, attributes=attrs)
    return Adapted(
        frame,
        scale=(1.0, 5.0),
        groups=ref,
        labels=[str(labels)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )


def read_biq2021(root: Path) -> Adapted:
    """BIQ2021: official train and test CSVs (`Image Name,MOS`, 0–1), images in Images/."""
    parts = []
    files = []
    for split, fname in (("train", "Train (Images and MOS).csv"), ("test", "Test (Images and MOS).csv")):
        labels = root / fname
        df = _read_table(labels)
        name_c, mos_c = _column(df, "Image Name", labels), _column(df, "MOS", labels)
        attrs, _ = _attributes(df, [name_c, mos_c])
        part = pd.concat(
            [pd.DataFrame({"name": _names(df[name_c]), "mos": df[mos_c].reset_index(drop=True)}), attrs],
            axis=1,
        )
        part["split"] = split
        parts.append(part)
        files.append(str(labels))
    df = pd.concat(parts, ignore_index=True)
    resolver = _Resolver([root / "Images"])
    paths, found = resolver.resolve_all(df["name"].tolist())
    attrs = df.drop(columns=["name", "mos", "split"])
    frame = _frame(df["name"].tolist(), paths, found, df["mos"], split=df["split"], attributes=attrs)
    return Adapted(frame, scale=(0.0, 1.0), labels=files, resolved_by_stem=resolver.by_stem)


def read_lsvq(root: Path, *, include_1080p: bool = True) -> Adapted:
    """LSVQ: labels_train_test.csv (+ labels_test_1080p.csv); names without extension; videos <name>.mp4."""
    sources = [(root / "labels_train_test.csv", "main")]
    extra = root / "labels_test_1080p.csv"
    if _as_bool(include_1080p, "include_1080p") and extra.is_file():
        sources.append((extra, "1080p"))
    parts, files, skipped_all = [], [], []
    for labels, subset in sources:
        df = _read_table(labels)
        name_c, mos_c = _column(df, "name", labels), _column(df, "mos", labels)
        test_c = _column(df, "is_test", labels, required=subset == "main")
        is_test = _parse_bool(df[test_c], f"{labels} column {test_c!r}") if test_c else np.ones(len(df), bool)
        if subset == "1080p":
            is_test = np.ones(len(df), dtype=bool)  # the 1080p set is a test set by construction
        attrs, skipped = _attributes(df, [name_c, mos_c])
        skipped_all += [s for s in skipped if s not in skipped_all]
        part = pd.concat(
            [pd.DataFrame({"name": _names(df[name_c]), "mos": df[mos_c].reset_index(drop=True)}), attrs],
            axis=1,
        )
        part["split"] = np.where(is_test, "test", "train")
        part["subset"] = subset
        parts.append(part)
        files.append(str(labels))
    df = pd.concat(parts, ignore_index=True)
    resolver = _Resolver(_existing_dirs(root, root / "videos"), ".mp4")
    paths, found = resolver.resolve_all(df["name"].tolist())
    attrs = df.drop(columns=["name", "mos", "split"])
    frame = _frame(
        df["name"].tolist(), paths, found, df["mos"], split=df["split"], media="video", attributes=attrs
    )
    return Adapted(
        frame,
        scale=(0.0, 100.0),
        labels=files,
        dropped_columns=skipped_all,
        resolved_by_stem=resolver.by_stem,
    )


VQUALA_MOS_COLUMNS = ("Traditional_MOS", "Alignment_MOS", "Aesthetic_MOS", "Temporal_MOS", "Overall_MOS")


def _find_vquala_labels(root: Path) -> Path:
    csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
    matching = []
    for p in csvs:
        try:
            head = _clean_columns(pd.read_csv(p, nrows=0, encoding="utf-8-sig"))
        except Exception:
            continue
        if {"video_name", "overall_mos"} <= {c.lower() for c in head.columns}:
            matching.append(p)
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise ValueError(
            f"{root}: no CSV with columns 'video_name' and 'Overall_MOS' (CSV files there: {[p.name for p in csvs]}); "
            "pass the labels file with --labels"
        )
    raise ValueError(f"{root}: several label CSVs {[p.name for p in matching]}; choose one with --labels")


def read_vquala(
    root: Path, *, labels: str | None = None, scale: Any = (1.0, 5.0), split_col: str | None = None
) -> Adapted:
    """VQualA 2025 / TaobaoVD-GC: one CSV with five MOS columns; mos = Overall_MOS; videos in videos/.

    The challenge's label files score every dimension on a 1–5 scale (the default); pass `scale` if a
    release differs. A warning is logged when the observed MOS falls outside the scale.
    """
    lo, hi = _as_scale(scale)
    path = (
        (root / labels if not Path(labels).is_absolute() else Path(labels))
        if labels
        else _find_vquala_labels(root)
    )
    df = _read_table(path)
    name_c, mos_c = _column(df, "video_name", path), _column(df, "Overall_MOS", path)
    split_c = _column(df, split_col, path) if split_col else _column(df, "split", path, required=False)
    split = normalize_split_values(df[split_c], f"{path} column {split_c!r}") if split_c else None
    names = _names(df[name_c])
    resolver = _Resolver(_existing_dirs(root / "videos", root), ".mp4")
    paths, found = resolver.resolve_all(names)
    mos = pd.to_numeric(df[mos_c], errors="coerce")
    if mos.notna().any() and (mos.min() < lo or mos.max() > hi):
        logger.warning(
            "vquala: Overall_MOS spans [%g, %g], outside the scale [%g, %g]; pass the right scale (e.g. --scale 0 100)",
            mos.min(),
            mos.max(),
            lo,
            hi,
        )
    attrs, skipped = _attributes(df, [name_c, mos_c, split_c])
    frame = _frame(names, paths, found, df[mos_c], split=split, media="video", attributes=attrs)
    return Adapted(
        frame, scale=(lo, hi), labels=[str(path)], dropped_columns=skipped, resolved_by_stem=resolver.by_stem
    )


def read_csv_labels(
    root: Path,
    *,
    labels: str = "labels.csv",
    name_col: str = "name",
    mos_col: str = "mos",
    std_col: str | None = None,
    split_col: str | None = None,
    scale: Any = None,
    higher_is_better: Any = True,
    media_col: str | None = None,
) -> Adapted:
    """Any table of (name, MOS[, std, split, media]); media under images/ or the root, mixed kinds allowed."""
    lo, hi = _as_scale(scale)
    path = Path(labels) if Path(labels).is_absolute() else root / labels
    df = _read_table(path)
    name_c, mos_c = _column(df, name_col, path), _column(df, mos_col, path)
    std_c = _column(df, std_col, path) if std_col else None
    if split_col:
        split_c = _column(df, split_col, path)
    else:
        split_c = _column(df, "split", path, required=False)
        if split_c:
            logger.info("csv: using column %r of %s as the split", split_c, path)
    media_c = _column(df, media_col, path) if media_col else _column(df, "media", path, required=False)
    split = normalize_split_values(df[split_c], f"{path} column {split_c!r}") if split_c else None
    media = None
    if media_c:
        media = [str(v).strip().lower() if not pd.isna(v) else "unknown" for v in df[media_c]]
    names = _names(df[name_c])
    resolver = _Resolver(_existing_dirs(root / "images", root))
    paths, found = resolver.resolve_all(names)
    attrs, skipped = _attributes(df, [name_c, mos_c, std_c, split_c, media_c])
    frame = _frame(
        names,
        paths,
        found,
        df[mos_c],
        std=df[std_c] if std_c else None,
        split=split,
        media=media,
        attributes=attrs,
    )
    return Adapted(
        frame,
        scale=(lo, hi),
        higher_is_better=_as_bool(higher_is_better, "higher_is_better"),
        labels=[str(path)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )


@dataclass(frozen=True)
class Format:
    """One supported layout: its reader, the dataset name it writes, and the layout shown in --help."""

    name: str
    read: Callable[..., Adapted]
    layout: str
    dataset: str | None = None  # None: the root folder's name (generic formats)

    def __call__(self, root: Path, **options: Any) -> Adapted:
        return self.read(root, **options)

    @property
    def options(self) -> list[str]:
        params = list(inspect.signature(self.read).parameters.values())[1:]
        return [p.name for p in params]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "koniq10k",
            read_koniq10k,
            "ROOT/koniq10k_scores_and_distributions.csv (image_name,c1..c5,c_total,MOS,SD,MOS_zscore; 1-5), "
            "images in ROOT/1024x768/ or ROOT/512x384/, split from ROOT/koniq10k_distributions_sets.csv `set` if present",
            "koniq10k",
        ),
        Format(
            "spaq",
            read_spaq,
            'ROOT/Annotations/"MOS and Image attribute scores.xlsx" (Image name, MOS 0-100, attributes), '
            "images in ROOT/TestImage/ or ROOT/Dataset/TestImage/; seeded split",
            "spaq",
        ),
        Format(
            "livec",
            read_livec,
            "ROOT/Data/AllImages_release.mat, AllMOS_release.mat, AllStdDev_release.mat (0-100), images in "
            "ROOT/Images/; t1-t7 dropped (1,162 remain); seeded split",
            "livec",
        ),
        Format(
            "kadid10k",
            read_kadid10k,
            "ROOT/dmos.csv (dist_img,ref_img,dmos,var; 1-5 higher is better), images in ROOT/images/; "
            "split seeded and grouped by reference image",
            "kadid10k",
        ),
        Format(
            "biq2021",
            read_biq2021,
            'ROOT/"Train (Images and MOS).csv" and "Test (Images and MOS).csv" (Image Name,MOS; 0-1), images in '
            "ROOT/Images/; official test kept, val carved from train",
            "biq2021",
        ),
        Format(
            "lsvq",
            read_lsvq,
            "ROOT/labels_train_test.csv (+ labels_test_1080p.csv): name (no extension), mos (0-100), is_test, ...; "
            "videos ROOT/<name>.mp4 or ROOT/videos/<name>.mp4; is_test and 1080p -> test, val carved from train",
            "lsvq",
        ),
        Format(
            "vquala",
            read_vquala,
            "ROOT/*.csv or --labels (video_name,Prompt,Traditional_MOS,Alignment_MOS,Aesthetic_MOS,Temporal_MOS,"
            "Overall_MOS; scale 1-5 unless --scale), videos in ROOT/videos/ or ROOT/; seeded split unless a split column",
            "vquala",
        ),
        Format(
            "csv",
            read_csv_labels,
            "ROOT/--labels with --name-col, --mos-col, --scale MIN MAX [--std-col, --split-col, --lower-is-better]; "
            "media under ROOT/images/ or ROOT/ (subfolders allowed, images and videos mixed)",
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# The entry points
# --------------------------------------------------------------------------------------------------


def _display_path(path: Path, cwd: Path) -> str:
    """Relative to the working directory when inside it (portable manifests), else absolute."""
    absolute = Path(os.path.abspath(path))  # not resolve(): DVC-cached symlinks must keep their project path
    try:
        return absolute.relative_to(cwd).as_posix()
    except ValueError:
        return absolute.as_posix()


def holdout_rows(n_rows: int, holdout: Mapping[str, Any]) -> np.ndarray:
    """A boolean mask of `holdout["n"]` rows drawn by a seeded permutation of the label rows
    (`numpy.random.default_rng(holdout["seed"])`): a fixed-size test set, the same for the same
    label file whatever the other split settings."""
    unknown = sorted(set(holdout) - {"n", "seed"})
    if unknown:
        raise ValueError(f"ingest.holdout takes n and seed, got also {unknown}")
    n = int(holdout.get("n", 0))
    if not 0 < n < n_rows:
        raise ValueError(f"ingest.holdout.n must be between 1 and {n_rows - 1} (the label rows), got {n}")
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.random.default_rng(int(holdout.get("seed", 0))).permutation(n_rows)[:n]] = True
    return mask


def _assign_splits(
    adapted: Adapted,
    ratios: Mapping[str, float],
    val_from_train: float,
    seed: int,
    holdout: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, str]:
    """Official splits where given, seeded ones elsewhere; val carved from train when none is official.

    With `holdout`, a fixed number of rows becomes the test split first (`holdout_rows`) and the
    ratios split the rest; only for datasets without an official split."""
    frame = adapted.frame
    ids = frame["name"].astype(str).to_numpy()
    groups = np.asarray(adapted.groups, dtype=object) if adapted.groups is not None else None
    official = frame["split"].astype("object")
    has_official = official.notna().to_numpy()
    split = official.to_numpy(dtype=object).copy()
    source = "official" if has_official.all() else "seeded" if not has_official.any() else "official+seeded"
    need = ~has_official
    if holdout:
        if has_official.any():
            raise ValueError(
                "ingest.holdout carves a test split out of a dataset without one, but this dataset has "
                "an official split: remove ingest.holdout (its official test split is used)"
            )
        held = holdout_rows(len(frame), holdout)
        split[held] = "test"
        need = need & ~held
        source = f"holdout of {int(held.sum())} (seed {int(holdout.get('seed', 0))}) + seeded"
    if need.any():
        split[need] = seeded_split(ids[need], ratios, seed, groups[need] if groups is not None else None)
    is_train = has_official & (split == "train")
    if (
        val_from_train > 0
        and has_official.any()
        and not (split[has_official] == "val").any()
        and is_train.any()
    ):
        carve = {"train": 1.0 - val_from_train, "val": val_from_train}
        split[is_train] = seeded_split(
            ids[is_train], carve, seed, groups[is_train] if groups is not None else None
        )
        source += f"; val carved from train ({val_from_train:g})"
    return split, source


def _run(
    fmt: str,
    root: str | Path,
    *,
    split_ratios: Mapping[str, float] | None,
    val_from_train: float,
    seed: int,
    options: dict[str, Any],
    holdout: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    root_path = Path(root)
    if not root_path.is_dir():
        raise ValueError(f"dataset root not found or not a folder: {root_path}")
    options = {k: v for k, v in options.items() if v is not None}
    dataset = str(options.pop("dataset", None) or spec.dataset or Path(os.path.abspath(root_path)).name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"format {fmt!r} does not take option(s) {unknown}; it takes {spec.options + ['dataset']}"
        )
    ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
    val_from_train = float(val_from_train)
    if not 0.0 <= val_from_train < 1.0:
        raise ValueError(f"val_from_train must be in [0, 1), got {val_from_train}")

    adapted = spec(root_path, **options)
    frame = adapted.frame
    if frame.empty:  # a header without rows (or every row a conventional drop): nothing to train on
        raise ValueError(
            f"{fmt}: the label file(s) {adapted.labels} have no rows"
            + (f" left after dropping {sum(d['count'] for d in adapted.dropped)}" if adapted.dropped else "")
            + "; check that the right file is given and that it is not cut short"
        )
    split, split_source = _assign_splits(adapted, ratios, val_from_train, int(seed), holdout)
    found = frame["_found"].to_numpy(dtype=bool)
    outside = outside_root_errors(list(frame["path"]), found, root_path)
    cwd = Path(os.path.abspath(os.getcwd()))
    out = frame.drop(columns=["_found"]).assign(
        split=split, path=[_display_path(p, cwd) for p in frame["path"]]
    )
    n_outside = sum(bool(e) for e in outside)
    if n_outside:  # kept, with the reason, for the gate to quarantine without reading the file
        out["path_error"] = outside
    manifest = make_manifest(
        out, dataset=dataset, scale=adapted.scale, higher_is_better=adapted.higher_is_better
    )

    missing = int((~found).sum())
    if missing:
        examples = [str(p) for p in frame.loc[~found, "path"].head(3)]
        logger.warning(
            "%s: %d of %d label row(s) have no file (kept; e.g. %s)", fmt, missing, len(frame), examples
        )
    if adapted.resolved_by_stem:
        logger.warning(
            "%s: %d name(s) matched a file with a different extension", fmt, adapted.resolved_by_stem
        )
    if n_outside:
        logger.warning(
            "%s: %d label row(s) name a file outside the dataset root %s (kept, not read; e.g. %s)",
            fmt,
            n_outside,
            root_path,
            [e.split(": resolves", 1)[0] for e in outside if e][:3],
        )
    nan_mos = int(manifest["mos"].isna().sum())
    if nan_mos:
        logger.warning("%s: %d row(s) have an unparseable MOS (kept as NaN)", fmt, nan_mos)
    per_split = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
    manifest.attrs["qualitune"] = {
        "stage": "ingest",
        "format": fmt,
        "dataset": dataset,
        "root": _display_path(Path(root_path), cwd),
        "labels": adapted.labels,
        "scale": list(adapted.scale),
        "higher_is_better": adapted.higher_is_better,
        "split": {
            "source": split_source,
            "ratios": ratios,
            "val_from_train": val_from_train,
            "seed": int(seed),
            "holdout": dict(holdout) if holdout else None,
        },
        "counts": {
            "rows": len(manifest),
            "per_split": per_split,
            "missing_files": missing,
            "outside_root": n_outside,
            "unparseable_mos": nan_mos,
            "resolved_by_stem": adapted.resolved_by_stem,
        },
        "dropped_rows": adapted.dropped,
        "dropped_columns": adapted.dropped_columns,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
    }
    logger.info("%s: %d rows (%s), %d without a file", fmt, len(manifest), per_split, missing)
    return manifest


def ingest(
    fmt: str,
    root: str | Path,
    *,
    split_ratios: Mapping[str, float] | None = None,
    val_from_train: float = 0.1,
    seed: int = 42,
    holdout: Mapping[str, Any] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Read dataset `root` laid out as `fmt` (a key of `FORMATS`) into the canonical manifest.

    `split_ratios` (default 0.7/0.15/0.15) applies where the dataset has no official split;
    `val_from_train` carves a validation share out of an official train split that has no val.
    `holdout` (`{"n": 500, "seed": 0}`) makes a fixed-size seeded test split first (datasets
    without an official split). `options` are the format's own (e.g. csv: labels, name_col,
    mos_col, scale; any: dataset). Provenance and counts are in `result.attrs["qualitune"]`.
    """
    return _run(
        fmt,
        root,
        split_ratios=split_ratios,
        val_from_train=val_from_train,
        seed=seed,
        options=options,
        holdout=holdout,
    )


def ingest_to_file(
    fmt: str,
    root: str | Path,
    out: str | Path,
    *,
    split_ratios: Mapping[str, float] | None = None,
    val_from_train: float = 0.1,
    seed: int = 42,
    holdout: Mapping[str, Any] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """`ingest`, then write the manifest as parquet at `out` with its provenance as metadata."""
    manifest = ingest(
        fmt,
        root,
        split_ratios=split_ratios,
        val_from_train=val_from_train,
        seed=seed,
        holdout=holdout,
        **options,
    )
    write_manifest(manifest, out, manifest.attrs["qualitune"])
    return manifest


def summary_lines(manifest: pd.DataFrame) -> list[str]:
    """A short human summary of an ingest result (rows per split, missing files), for CLI and stage."""
    meta = manifest.attrs.get("qualitune", {})
    counts = meta.get("counts", {})
    lines = [
        f"{meta.get('dataset', '?')} ({meta.get('format', '?')}): {len(manifest)} rows; "
        + ", ".join(f"{s} {n}" for s, n in counts.get("per_split", {}).items()),
        f"file not found: {counts.get('missing_files', 0)} row(s); outside the dataset root: "
        f"{counts.get('outside_root', 0)}; unparseable MOS: {counts.get('unparseable_mos', 0)}",
        f"split: {meta.get('split', {}).get('source', '?')}; source scale {meta.get('scale')} "
        f"({'higher' if meta.get('higher_is_better', True) else 'lower'} is better)",
    ]
    for drop in meta.get("dropped_rows", []):
        lines.append(f"dropped {drop['count']} row(s): {drop['reason']}")
    return lines


__all__ = [
    "DEFAULT_SPLIT_RATIOS",
    "FORMATS",
    "KADID_DISTORTIONS",
    "Adapted",
    "Format",
    "ingest",
    "ingest_to_file",
    "normalize_split_values",
    "summary_lines",
]
