"""`qualitune validate MANIFEST --quarantine FILE`: the Great Expectations gate."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="run the Great Expectations gate over a manifest; failing rows go to a quarantine file",
        description="Checks schema and types, MOS inside its source scale, mos_norm in [1,5], no NaN, unique "
        "items, valid splits, every file exists and decodes, no identical content across splits. Failing rows "
        "are written to the quarantine CSV with a reason; exits 1 when the failing share exceeds --max-fail-share.",
    )
    p.add_argument("manifest", help="manifest parquet written by `qualitune ingest`")
    p.add_argument(
        "--quarantine", required=True, help="CSV that receives failing rows with a `reason` column"
    )
    p.add_argument("--out", help="parquet of the rows that pass (default: not written)")
    p.add_argument("--report", default=None, help="JSON report (default: <quarantine>.report.json)")
    p.add_argument("--html", default=None, help="also write GX's HTML validation page here")
    p.add_argument(
        "--max-fail-share", type=float, default=0.0, help="tolerated share of failing rows (default 0)"
    )
    p.add_argument(
        "--no-media-check",
        action="store_true",
        help="skip decoding every file (faster); existence and headers are still checked, "
        "duplicate content across splits is not",
    )
    p.add_argument("--workers", type=int, default=None, help="processes for decoding (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from qualitune.validate import GateFailed, run_validation, summary

    report = args.report or f"{args.quarantine}.report.json"
    t0 = time.perf_counter()
    try:
        outcome = run_validation(
            args.manifest,
            out=args.out,
            quarantine=args.quarantine,
            report=report,
            html=args.html,
            max_fail_share=args.max_fail_share,
            check_media=not args.no_media_check,
            workers=args.workers,
        )
    except GateFailed as exc:
        print(
            f"validation gate FAILED\n{exc}\nquarantine: {args.quarantine}; report: {report}", file=sys.stderr
        )
        return 1
    print(summary(outcome))
    print(f"validation gate passed in {time.perf_counter() - t0:.1f} s; report: {report}")
    return 0
