"""`qualitune score --model REF [--mode greedy|expected] [--batch-size N] [--json | --out FILE] PATH...`

Prints one line per file, or with `--out scores.csv` / `scores.jsonl` writes them to that file as
they are scored, with a progress bar: an interrupted run resumes where it stopped (files already
scored in that file are skipped, failed ones retried; see `qualitune.score_file`). With `--json`, one JSON object per line: `path`, `score` (on the
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
from qualitune.errors import QualituneError


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
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument(
        "--out",
        metavar="FILE",
        help="write rows to FILE (.csv or .jsonl) instead of stdout; a re-run resumes it",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=128,
        help="with --out: files scored between two durable appends (what an interrupt can lose)",
    )
    add_model_runtime_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.commands.annotate import expand_paths
    from qualitune.scorer import Scorer

    refused: dict[str, str] = {}  # links out of a folder given: a row each with the reason, never read
    paths = expand_paths(args.paths, refused)
    if not paths and not refused:
        raise QualituneError(f"no media files found in {', '.join(args.paths)}")
    refused_rows = [{"path": p, "score": None, "error": why} for p, why in refused.items()]
    if args.out is not None:
        return _run_to_file(args, paths, refused_rows)
    scorer = Scorer.load(args.model, device=default_device(args.device), dtype=args.dtype)
    run_ = scorer.score_paths([str(p) for p in paths], mode=args.mode, batch_size=args.batch_size)
    for r in run_.results + refused_rows:
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
        f"media errors {summary['media_errors']}, unparsed answers {summary['parse_failures']}"
        + (f", {len(refused_rows)} links out of the folder not read" if refused_rows else ""),
        file=sys.stderr,
    )
    for idx, raw in run_.report.failures:
        print(f"  unparsed answer for {run_.results[idx]['path']}: {raw!r}", file=sys.stderr)
    return 1 if run_.n_failed or refused_rows else 0


def _run_to_file(args: argparse.Namespace, paths: list, refused_rows: list[dict]) -> int:
    """Score into `args.out` a chunk at a time, skipping what the file already has."""
    from qualitune.progress import Progress
    from qualitune.score_file import ScoreFile, key
    from qualitune.scorer import Scorer

    if args.chunk < 1:
        raise QualituneError(f"--chunk must be >= 1, got {args.chunk}")
    out = ScoreFile(args.out, model=args.model, mode=args.mode)
    done = out.done
    todo = [str(p) for p in paths if key(p) not in done]
    skipped = len(paths) - len(todo)
    scored = unparsed = 0
    failed = len(refused_rows)
    out.append(refused_rows)
    if todo:
        scorer = Scorer.load(args.model, device=default_device(args.device), dtype=args.dtype)
        with Progress(len(todo), f"scoring ({args.mode}) -> {args.out}", "files") as progress:
            for start in range(0, len(todo), args.chunk):
                chunk = todo[start : start + args.chunk]
                run_ = scorer.score_paths(
                    chunk,
                    mode=args.mode,
                    batch_size=args.batch_size,
                    on_progress=lambda n, _t, s=start: progress.update(s + n),
                )
                out.append(run_.results)
                scored += sum(r["score"] is not None for r in run_.results)
                failed += run_.n_failed
                unparsed += run_.report.n_failed
    print(
        f"{args.out}: scored {scored} files ({args.mode}), {failed} failed "
        f"({unparsed} unparsed answers), {skipped} already scored there and skipped"
        + (f", {out.retried} failed before and retried" if out.retried else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0
