"""KADID-10k: dmos.csv (1-5, higher is better), images in images/; split grouped by reference image."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from qualitune.ingest import core
from qualitune.kadid import KADID_DISTORTIONS, KADID_NAME

logger = logging.getLogger(__name__)


def read_kadid10k(root: Path) -> core.Adapted:
    """KADID-10k: dmos.csv (1–5, higher is better; std = sqrt(var)); split grouped by reference image."""
    labels = root / "dmos.csv"
    df = core._read_table(labels)
    dist_c, ref_c = core._column(df, "dist_img", labels), core._column(df, "ref_img", labels)
    mos_c, var_c = core._column(df, "dmos", labels), core._column(df, "var", labels, required=False)
    names = core._names(df[dist_c])
    refs_col = core._names(df[ref_c])
    ref, dist, level = [], [], []
    for n, r in zip(names, refs_col, strict=True):
        m = KADID_NAME.match(PurePosixPath(n).name)
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
    resolver = core._Resolver([root / "images"])
    paths, found = resolver.resolve_all(names)
    attrs, skipped = core._attributes(df, [dist_c, mos_c])
    attrs.insert(0, "level", pd.array(level, dtype="Int64"))
    attrs.insert(
        0, "distortion_name", [KADID_DISTORTIONS.get(d, pd.NA) if d is not pd.NA else pd.NA for d in dist]
    )
    attrs.insert(0, "distortion", pd.array(dist, dtype="Int64"))
    attrs.insert(0, "ref", ref)
    frame = core._frame(names, paths, found, df[mos_c], std=std, attributes=attrs)
    return core.Adapted(
        frame,
        scale=(1.0, 5.0),
        groups=ref,
        labels=[str(labels)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )
