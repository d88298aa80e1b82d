"""DVC stage `labels`: validated manifest → integer (or decimal) answer labels (params section `labels`)."""

from __future__ import annotations

import sys

from qualitune.labels import LabelRange, add_labels
from qualitune.manifest import manifest_metadata, read_manifest, write_manifest
from qualitune.sections import LabelsSettings, ValidateSettings
from qualitune.stages import stage_main


def run_stage(params: dict) -> int:
    s = LabelsSettings.from_params(params)
    src = ValidateSettings.value(params, "out")
    lo, hi = s.range
    df = add_labels(read_manifest(src), fmt=s.format, rng=LabelRange(lo, hi))
    write_manifest(df, s.out, manifest_metadata(src) | {"labels": {"format": s.format, "range": [lo, hi]}})
    print(
        f"labels: {len(df)} items, range [{lo}, {hi}], observed [{df['label_int'].min()}, {df['label_int'].max()}]"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("labels", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
