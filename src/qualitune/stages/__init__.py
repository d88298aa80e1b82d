"""Thin DVC stage entry points: `python -m qualitune.stages.<name>` reads its params section and calls library code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from qualitune.config import DEFAULT_PARAMS, load_params
from qualitune.errors import EXIT_USER_ERROR, QualituneError
from qualitune.logs import setup as setup_logging


def stage_main(name: str, body: Callable[[dict[str, Any]], int], argv: list[str] | None = None) -> int:
    """The shared shell of every stage: `--params`, logging, and user errors as a message + exit 2.

    A failing stage must fail `dvc repro` with a readable reason, not a traceback; bugs (anything but
    a `QualituneError`) still raise with theirs.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m qualitune.stages.{name}", description=f"DVC stage {name!r}"
    )
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default params.yaml)")
    args = parser.parse_args(argv)
    try:
        setup_logging()  # QUALITUNE_LOG_LEVEL=DEBUG dvc repro for everything
        return int(body(load_params(args.params)) or 0)
    except QualituneError as exc:
        print(f"{name} stage: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
