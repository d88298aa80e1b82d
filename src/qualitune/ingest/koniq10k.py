"""KonIQ-10k: the scores CSV, the official `set` split file, images in 1024x768/ or 512x384/."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from qualitune.ingest import core

logger = logging.getLogger(__name__)


def read_koniq10k(root: Path, *, image_dir: str | None = None) -> core.Adapted:
    """KonIQ-10k: scores CSV (MOS, SD on 1–5), images in 1024x768/ else 512x384/, official `set` split."""
    labels = root / "koniq10k_scores_and_distributions.csv"
    sets = root / "koniq10k_distributions_sets.csv"
    if not labels.is_file() and sets.is_file():
        # The split file repeats image_name, c1-c5, MOS and SD: enough on its own.
        logger.info("koniq10k: %s not found; reading scores from %s", labels.name, sets)
        labels = sets
    df = core._read_table(labels)
    name_c = core._column(df, "image_name", labels)
    mos_c = core._column(df, "MOS", labels)
    sd_c = core._column(df, "SD", labels, required=False)
    names = core._names(df[name_c])
    split = None
    files = [str(labels)]
    if sets.is_file():
        s = core._read_table(sets, "split file")
        s_name, s_set = core._column(s, "image_name", sets), core._column(s, "set", sets)
        mapping = dict(zip(core._names(s[s_name]), s[s_set], strict=True))
        split = core.normalize_split_values(
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
    bases = [root / image_dir] if image_dir else core._existing_dirs(root / "1024x768", root / "512x384")
    resolver = core._Resolver(bases[:1])  # one resolution only: never mix 1024x768 and 512x384 files
    paths, found = resolver.resolve_all(names)
    attrs, skipped = core._attributes(
        df, [name_c, mos_c, sd_c, core._column(df, "set", labels, required=False)]
    )
    frame = core._frame(
        names, paths, found, df[mos_c], std=df[sd_c] if sd_c else None, split=split, attributes=attrs
    )
    return core.Adapted(
        frame, scale=(1.0, 5.0), labels=files, dropped_columns=skipped, resolved_by_stem=resolver.by_stem
    )
