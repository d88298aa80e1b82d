"""`qualitune pmod LABELED --annotations CSV --out FILE`: machine opinion distributions (VITAL)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pmod",
        help="calibrate annotator scores on the train split and build per-item opinion distributions",
        description="Joins `qualitune annotate` scores onto a manifest (by path), maps each annotator onto 1-5 "
        "with a monotone calibration fitted on the train split (isotonic vs MOS, or rank/ECDF without MOS), "
        "and writes pmod_mean, pmod_std, pmod_p1..p5 and a short attribute description per item.",
    )
    p.add_argument("manifest", help="manifest parquet (e.g. the output of `qualitune labels`)")
    p.add_argument("--annotations", required=True, help="CSV written by `qualitune annotate`")
    p.add_argument(
        "--annotators", default=None, help="comma-separated subset (default: every annotator column)"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--calibration", choices=["isotonic", "rank"], default="isotonic")
    p.add_argument("--min-std", type=float, default=0.25)
    p.add_argument("--metrics", default=None, help="also write SRCC/PLCC per split to this JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from qualitune.annotators import available_annotators
    from qualitune.pmod import run_pmod

    if args.annotators:
        names = [n.strip() for n in args.annotators.split(",") if n.strip()]
    else:
        cols = pd.read_csv(args.annotations, nrows=0).columns
        names = [c for c in cols if c in set(available_annotators())]
    run_pmod(
        args.manifest,
        args.annotations,
        names,
        out=args.out,
        calibration=args.calibration,
        min_std=args.min_std,
        metrics=args.metrics,
    )
    return 0
