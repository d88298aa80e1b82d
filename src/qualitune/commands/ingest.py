"""`qualitune ingest FORMAT ROOT --out MANIFEST`: a dataset as published → the canonical manifest.

Only argv handling lives here; the work is `qualitune.ingest.ingest_to_file`, which the DVC stage
and the flows call too.
"""

from __future__ import annotations

import argparse
import textwrap
import time
from typing import Any

import yaml


def _epilog() -> str:
    from qualitune.ingest import FORMATS

    lines = ["formats and the layout each expects under ROOT:"]
    for name, fmt in FORMATS.items():
        extra = f"  [options: {', '.join(fmt.options)}]" if fmt.options else ""
        lines += textwrap.wrap(
            f"{name:9s} {fmt.layout}{extra}", width=100, initial_indent="  ", subsequent_indent=" " * 12
        )
    lines += [
        "",
        "Rows whose file is missing are kept (the validation gate quarantines them); unparseable MOS",
        "become NaN. Official splits are kept; otherwise a hash-seeded split by --split-ratios.",
        "",
        "example:",
        "  qualitune ingest csv data/raw/mine --labels labels.csv --name-col image_name --mos-col mos \\",
        "      --scale 0 1 --out data/manifest.parquet",
    ]
    return "\n".join(lines)


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    from qualitune.ingest import FORMATS

    p = subparsers.add_parser(
        "ingest",
        help="read a dataset in its published layout into the canonical manifest",
        description="Read a quality dataset (labels + media) in its published layout and write the "
        "canonical manifest (parquet) with provenance metadata.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("format", choices=sorted(FORMATS), metavar="FORMAT", help="one of: " + ", ".join(FORMATS))
    p.add_argument("root", metavar="ROOT", help="the dataset's folder")
    p.add_argument("--out", required=True, metavar="MANIFEST", help="parquet file to write")
    p.add_argument("--labels", help="labels file (csv, vquala), relative to ROOT or absolute")
    p.add_argument("--name-col", help="column with the file name (csv)")
    p.add_argument("--mos-col", help="column with the MOS (csv)")
    p.add_argument("--std-col", help="column with the MOS standard deviation (csv)")
    p.add_argument("--split-col", help="column with train/val/test (csv, vquala)")
    p.add_argument("--media-col", help="column with image/video (csv; default: from the extension)")
    p.add_argument(
        "--scale", nargs=2, type=float, metavar=("MIN", "MAX"), help="source MOS range (csv, vquala)"
    )
    p.add_argument("--lower-is-better", action="store_true", help="the score is a DMOS (csv)")
    p.add_argument(
        "--dataset", help="dataset name used in item ids (default: the format, or ROOT's name for csv)"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the hash-based split (default 42)")
    p.add_argument(
        "--split-ratios",
        nargs=3,
        type=float,
        metavar=("TRAIN", "VAL", "TEST"),
        default=None,
        help="shares where there is no official split (default 0.7 0.15 0.15)",
    )
    p.add_argument(
        "--val-from-train",
        type=float,
        default=0.1,
        help="share of an official train split carved out as val when none is given (default 0.1)",
    )
    p.add_argument(
        "-o",
        "--option",
        action="append",
        type=_option,
        default=[],
        metavar="KEY=VALUE",
        help="any other format option, e.g. -o keep_training_images=true (livec)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.ingest import ingest_to_file, summary_lines

    options: dict[str, Any] = dict(args.option)
    for key in ("labels", "name_col", "mos_col", "std_col", "split_col", "media_col", "dataset"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.scale is not None:
        options["scale"] = tuple(args.scale)
    if args.lower_is_better:
        options["higher_is_better"] = False
    ratios = (
        dict(zip(("train", "val", "test"), args.split_ratios, strict=True)) if args.split_ratios else None
    )
    start = time.perf_counter()
    manifest = ingest_to_file(
        args.format,
        args.root,
        args.out,
        split_ratios=ratios,
        val_from_train=args.val_from_train,
        seed=args.seed,
        **options,
    )
    for line in summary_lines(manifest):
        print(line)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0
