"""DVC stage `labels`: validated manifest → integer (or decimal) answer labels (params section `labels`)."""

from __future__ import annotations

import argparse
import sys

from qualitune.config import load_params, section
from qualitune.labels import LabelRange, add_labels
from qualitune.manifest import manifest_metadata, read_manifest, write_manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = section(params, "labels")
    src = section(params, "validate")["out"]
    lo, hi = cfg.get("range", [10, 50])
    df = add_labels(read_manifest(src), fmt=cfg.get("format", "integer"), rng=LabelRange(int(lo), int(hi)))
    meta = manifest_metadata(src) | {"labels": {"format": cfg.get("format", "integer"), "range": [lo, hi]}}
    write_manifest(df, cfg["out"], meta)
    counts = df["label_int"].describe()
    print(
        f"labels: {len(df)} items, label range [{lo}, {hi}], observed [{counts['min']:.0f}, {counts['max']:.0f}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
