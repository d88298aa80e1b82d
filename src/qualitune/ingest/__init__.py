"""Dataset adapters: each public quality dataset's own files, as published, into the canonical manifest.

Every dataset ships its labels differently (CSV, Excel, MATLAB cells, two files for two splits, names
without extensions, names in subfolders) and its media with small disagreements against the labels
(".JPG" on disk for ".jpg" in the table, spaces and parentheses in names). A reader's only job is
to read one layout faithfully; everything shared is written once, so every dataset gets the same
guarantees:

- no row is ever dropped silently: a label whose file is missing keeps its expected path and the
  validation gate quarantines it; an unparseable MOS becomes NaN for the same reason; the only
  conventional drop (LIVE Challenge's seven training images t1–t7) is logged and recorded;
- official splits are kept; otherwise a hash-seeded split (grouped by content where a dataset has
  several distortions of one reference) that does not move old items when new ones are added;
- the manifest's metadata records the format, the source scale and direction, the options and the
  counts, so a manifest can always be traced back to the files it came from.

The package:

    core.py        Adapted, the file resolver, table/column/bool/scale helpers, reserved names
    koniq10k.py spaq.py livec.py kadid10k.py biq2021.py lsvq.py vquala.py csv_labels.py
                   one reader per published layout
    formats.py     FORMATS (name -> reader) and the entry points `ingest`, `ingest_to_file`,
                   `summary_lines`

The splits themselves are `qualitune.splits`; KADID-10k's type table is `qualitune.kadid`.
"""

from __future__ import annotations

from qualitune.ingest.biq2021 import read_biq2021
from qualitune.ingest.core import SPLIT_ALIASES, Adapted, normalize_split_values
from qualitune.ingest.csv_labels import read_csv_labels
from qualitune.ingest.formats import FORMATS, Format, ingest, ingest_to_file, summary_lines
from qualitune.ingest.kadid10k import read_kadid10k
from qualitune.ingest.koniq10k import read_koniq10k
from qualitune.ingest.livec import read_livec
from qualitune.ingest.lsvq import read_lsvq
from qualitune.ingest.spaq import read_spaq
from qualitune.ingest.vquala import read_vquala
from qualitune.kadid import KADID_DISTORTIONS
from qualitune.splits import DEFAULT_SPLIT_RATIOS, holdout_rows

__all__ = [
    "DEFAULT_SPLIT_RATIOS",
    "FORMATS",
    "KADID_DISTORTIONS",
    "SPLIT_ALIASES",
    "Adapted",
    "Format",
    "holdout_rows",
    "ingest",
    "ingest_to_file",
    "normalize_split_values",
    "read_biq2021",
    "read_csv_labels",
    "read_kadid10k",
    "read_koniq10k",
    "read_livec",
    "read_lsvq",
    "read_spaq",
    "read_vquala",
    "summary_lines",
]
