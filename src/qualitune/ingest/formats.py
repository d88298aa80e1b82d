"""The format registry (name -> reader) and the entry points that run one: `ingest`, `ingest_to_file`.

`_run` is everything a reader does not do: checking the root and options, assigning splits
(`qualitune.splits.assign_splits`), making paths relative, flagging files outside the root,
logging what is missing, and recording provenance in the manifest's metadata.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError
from qualitune.ingest.biq2021 import read_biq2021
from qualitune.ingest.core import Adapted
from qualitune.ingest.csv_labels import read_csv_labels
from qualitune.ingest.kadid10k import read_kadid10k
from qualitune.ingest.koniq10k import read_koniq10k
from qualitune.ingest.livec import read_livec
from qualitune.ingest.lsvq import read_lsvq
from qualitune.ingest.spaq import read_spaq
from qualitune.ingest.vquala import read_vquala
from qualitune.manifest import SPLITS, make_manifest, write_manifest
from qualitune.media import outside_root_errors
from qualitune.splits import DEFAULT_SPLIT_RATIOS, assign_splits

logger = logging.getLogger(__name__)


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


def _display_path(path: Path, cwd: Path) -> str:
    """Relative to the working directory when inside it (portable manifests), else absolute."""
    absolute = Path(os.path.abspath(path))  # not resolve(): DVC-cached symlinks must keep their project path
    try:
        return absolute.relative_to(cwd).as_posix()
    except ValueError:
        return absolute.as_posix()


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
        raise QualituneError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    root_path = Path(root)
    if not root_path.is_dir():
        raise QualituneError(f"dataset root not found or not a folder: {root_path}")
    options = {k: v for k, v in options.items() if v is not None}
    dataset = str(options.pop("dataset", None) or spec.dataset or Path(os.path.abspath(root_path)).name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise QualituneError(
            f"format {fmt!r} does not take option(s) {unknown}; it takes {spec.options + ['dataset']}"
        )
    ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
    val_from_train = float(val_from_train)
    if not 0.0 <= val_from_train < 1.0:
        raise QualituneError(f"val_from_train must be in [0, 1), got {val_from_train}")

    adapted = spec(root_path, **options)
    frame = adapted.frame
    if frame.empty:  # a header without rows (or every row a conventional drop): nothing to train on
        raise QualituneError(
            f"{fmt}: the label file(s) {adapted.labels} have no rows"
            + (f" left after dropping {sum(d['count'] for d in adapted.dropped)}" if adapted.dropped else "")
            + "; check that the right file is given and that it is not cut short"
        )
    groups = np.asarray(adapted.groups, dtype=object) if adapted.groups is not None else None
    split, split_source = assign_splits(
        frame["name"].astype(str).to_numpy(),
        frame["split"],
        groups,
        ratios,
        val_from_train,
        int(seed),
        holdout,
    )
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
