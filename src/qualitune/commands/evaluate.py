"""`qualitune evaluate --model MODEL --root DIR [--root DIR ...] --out FILE.json`

Scores every labelled folder with a trained scorer and writes one JSON object keyed by each
folder's name: `{"srcc", "plcc", "krcc", "final", "n", "n_failed", "failed": [...], ...}`. A folder
is laid out as `labels.csv` (columns `image_name,mos[,std]`) plus its images or videos under
`images/` (or the folder itself), as `../shared/datasets/biq2021-train-subset` is. Any MOS scale:
inferred from the values (the smallest of [0,1], [1,5], [0,5], [0,10], [0,100] that holds them) or
given with `--scale MIN MAX`. Items that cannot be scored (no file, an unreadable file, a MOS outside
the scale, an unparseable answer) are left out of the correlations, counted in `n_failed` and
listed with their reason; the exit status is then 1, so scripts notice.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from qualitune.commands import add_model_runtime_arguments, default_device
from qualitune.errors import QualituneError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score labelled folders with a scorer: SRCC/PLCC/KRCC per folder",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="scorer folder, or models:/name@alias, models:/name/3 ...")
    p.add_argument("--root", action="append", required=True, help="a labelled folder (repeatable)")
    p.add_argument("--mode", choices=["expected", "greedy"], default="expected")
    p.add_argument("--scale", nargs=2, type=float, metavar=("MIN", "MAX"), help="the MOS scale of every root")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", required=True, help="the results JSON")
    add_model_runtime_arguments(p)
    p.set_defaults(func=run)


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    from qualitune.evaluate import evaluate_root
    from qualitune.scorer import Scorer

    roots = [Path(r) for r in args.root]
    for r in roots:
        if not r.is_dir():
            raise QualituneError(f"--root {r}: not a folder")
    names = [r.resolve().name for r in roots]
    if len(set(names)) != len(names):
        raise QualituneError(f"the roots' folder names key the output, so they must differ: {names}")
    scorer = Scorer.load(args.model, device=default_device(args.device), dtype=args.dtype)
    results = {}
    for name, root in zip(names, roots, strict=True):
        results[name] = evaluate_root(
            scorer,
            root,
            mode=args.mode,
            scale=tuple(args.scale) if args.scale else None,
            batch_size=args.batch_size,
        )
        r = results[name]
        print(
            f"{name}: SRCC {_fmt(r['srcc'])} PLCC {_fmt(r['plcc'])} KRCC {_fmt(r['krcc'])} "
            f"final {_fmt(r['final'])} (n {r['n']}, failed {r['n_failed']}, scale {r['scale']} {r['scale_source']})"
        )
        for f in r["failed"]:
            print(f"  not scored: {f['name']}: {f['reason']}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    print(f"wrote {out}")
    return 1 if any(r["n_failed"] for r in results.values()) else 0
