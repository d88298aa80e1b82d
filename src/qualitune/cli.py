"""The `qualitune` console command.

Each subcommand lives in its own module under `qualitune.commands` and exposes
`register(subparsers)`; this file only assembles them, so adding a command never edits another's
code. Library code stays free of argv handling.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qualitune.logs import setup as setup_logging

# Module names under qualitune.commands, in the order `--help` lists them.
COMMANDS = (
    "build_demo",
    "ingest",
    "validate",
    "labels",
    "annotate",
    "pmod",
    "train",
    "score",
    "evaluate",
    "tune",
    "register",
    "serve",
    "schedule",
    "experiment",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qualitune",
        description="Fine-tune vision-language models into image/video quality scorers; data, labels, "
        "machine opinion distributions, training, evaluation, registry and serving.",
    )
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="debug messages, third-party libraries' included"
    )
    loud.add_argument(
        "-q", "--quiet", action="store_true", help="warnings and errors only; no progress output"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"qualitune.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from qualitune.errors import EXIT_USER_ERROR, QualituneError

    try:
        setup_logging(verbose=args.verbose, quiet=args.quiet)
    except QualituneError as exc:
        print(f"qualitune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except QualituneError as exc:  # user-facing errors: message only; anything else is a bug: traceback
        print(f"qualitune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
