"""LIVE Challenge: three MATLAB files (names, MOS 0-100, std), images in Images/; t1-t7 dropped."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from qualitune.errors import QualituneError
from qualitune.ingest import core

logger = logging.getLogger(__name__)


def _mat_vector(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    core._require_file(path, "MATLAB label file")
    try:
        data = loadmat(path)
    except Exception as exc:
        raise QualituneError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc})") from exc
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise QualituneError(f"{path}: missing variable {key!r}; the file has {found}")
    return np.asarray(data[key]).ravel()


def _cell_text(cell: Any) -> str:
    """A MATLAB cell entry as loaded by scipy (a nested 1-element array) as plain text."""
    while isinstance(cell, np.ndarray):
        if cell.size == 0:
            return ""
        cell = cell.ravel()[0]
    return str(cell).strip()


LIVEC_TRAINING = frozenset(f"t{i}" for i in range(1, 8))


def read_livec(root: Path, *, keep_training_images: bool = False) -> core.Adapted:
    """LIVE Challenge: three .mat files (names cell, MOS 0–100, std); t1–t7 dropped by convention."""
    data = root / "Data"
    img_file, mos_file, std_file = (
        data / f"{k}.mat" for k in ("AllImages_release", "AllMOS_release", "AllStdDev_release")
    )
    names = [_cell_text(c) for c in _mat_vector(img_file, "AllImages_release")]
    mos = _mat_vector(mos_file, "AllMOS_release").astype(np.float64)
    std = _mat_vector(std_file, "AllStdDev_release").astype(np.float64) if std_file.is_file() else None
    if len(mos) != len(names) or (std is not None and len(std) != len(names)):
        raise QualituneError(
            f"{data}: {len(names)} image names but {len(mos)} MOS"
            + ("" if std is None else f" and {len(std)} std values")
            + "; the three files must describe the same images"
        )
    if std is None:
        logger.warning("livec: %s not found; mos_std left empty", std_file)
    keep = np.ones(len(names), dtype=bool)
    dropped: list[dict[str, Any]] = []
    training = np.asarray([PurePosixPath(n).stem.lower() in LIVEC_TRAINING for n in names])
    if training.any() and not core._as_bool(keep_training_images, "keep_training_images"):
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
    resolver = core._Resolver(core._existing_dirs(root / "Images") + [root / "Images" / "trainingImages"])
    paths, found = resolver.resolve_all(names)
    frame = core._frame(names, paths, found, mos, std=std)
    files = [str(f) for f in (img_file, mos_file, std_file) if f.is_file()]
    return core.Adapted(
        frame, scale=(0.0, 100.0), labels=files, dropped=dropped, resolved_by_stem=resolver.by_stem
    )
