"""`qualitune score --model REF [--mode greedy|expected] [--batch-size N] [--json] PATH...`

Prints one line per file. With `--json`, one JSON object per line: `path`, `score` (on the
scorer's label scale, e.g. 10-50), `score_1_5`, `levels` (probabilities of bad..excellent) and,
per mode, the raw `answer` (greedy) or `invalid_mass` (expected). A file that cannot be read or an
answer that does not parse gets `"score": null` and an `error`; the summary on stderr counts them
and lists the raw unparsed answers. Exit status 1 when any item failed, so scripts notice.
"""

from __future__ import annotations

import argparse
import json
import sys

from qualitune.commands import add_model_runtime_arguments, default_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "score",
        help="score images/videos with a trained scorer",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", help="image/video files or folders (searched recursively)")
    p.add_argument(
        "--model",
        required=True,
        help="scorer folder (e.g. models/scorer) or models:/name@alias from the registry",
    )
    p.add_argument(
        "--mode",
        choices=["expected", "greedy"],
        default="expected",
        help="expected: probability-weighted answer from one forward pass (default); "
        "greedy: temperature-0 decoding, the papers' protocol",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_model_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.commands.annotate import expand_paths
    from qualitune.scorer import Scorer

    paths = expand_paths(args.paths)
    if not paths:
        raise ValueError(f"no media files found in {', '.join(args.paths)}")
    scorer = Scorer.load(args.model, device=default_device(args.device), dtype=args.dtype)
    run_ = scorer.score_paths([str(p) for p in paths], mode=args.mode, batch_size=args.batch_size)
    for r in run_.results:
        if args.json:
            print(json.dumps(r), flush=False)
        elif r["score"] is None:
            print(f"{r['path']}\tERROR\t{r.get('error', '')}")
        else:
            print(f"{r['path']}\t{r['score']:.3f}")
    summary = run_.summary()
    lo, hi = scorer.fmt.scale
    print(
        f"scored {summary['scored']}/{summary['items']} items ({args.mode}, scale {lo:g}-{hi:g}); "
        f"media errors {summary['media_errors']}, unparsed answers {summary['parse_failures']}",
        file=sys.stderr,
    )
    for idx, raw in run_.report.failures:
        print(f"  unparsed answer for {run_.results[idx]['path']}: {raw!r}", file=sys.stderr)
    return 1 if run_.n_failed else 0
