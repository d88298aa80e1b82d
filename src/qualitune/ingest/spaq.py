"""SPAQ: the Excel annotations (MOS 0-100 and attribute scores), images in TestImage/."""

from __future__ import annotations

from pathlib import Path

from qualitune.ingest import core


def read_spaq(root: Path) -> core.Adapted:
    """SPAQ: Excel annotations (MOS 0–100 and five attribute scores), images in TestImage/."""
    name = "MOS and Image attribute scores.xlsx"
    labels = root / "Annotations" / name
    if not labels.is_file() and (root / name).is_file():
        labels = root / name
    df = core._read_table(labels)
    name_c, mos_c = core._column(df, "Image name", labels), core._column(df, "MOS", labels)
    names = core._names(df[name_c])
    resolver = core._Resolver(core._existing_dirs(root / "TestImage", root / "Dataset" / "TestImage"))
    paths, found = resolver.resolve_all(names)
    attrs, skipped = core._attributes(df, [name_c, mos_c])
    frame = core._frame(names, paths, found, df[mos_c], attributes=attrs)
    return core.Adapted(
        frame,
        scale=(0.0, 100.0),
        labels=[str(labels)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )
