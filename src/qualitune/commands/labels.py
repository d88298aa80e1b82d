"""`qualitune labels MANIFEST --out FILE`: add IOVQA integer labels (or the decimal baseline)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "labels",
        help="add integer answer labels (IOVQA) to a manifest",
        description="label = clamp(round(lo + (mos_norm-1)/4*(hi-lo)), lo, hi); default [10,50] = MOS on 1-5 "
        "rounded to one decimal times 10. --format decimal writes the '3.5' baseline as the answer text.",
    )
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--range", nargs=2, type=int, default=[10, 50], metavar=("LO", "HI"))
    p.add_argument("--format", choices=["integer", "decimal"], default="integer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.labels import LabelRange, add_labels
    from qualitune.manifest import manifest_metadata, read_manifest, write_manifest

    df = add_labels(read_manifest(args.manifest), fmt=args.format, rng=LabelRange(*args.range))
    write_manifest(df, args.out, manifest_metadata(args.manifest) | {"labels": vars(args) | {"func": None}})
    print(f"wrote {len(df)} labelled rows to {args.out}")
    return 0
