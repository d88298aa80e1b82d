"""One logging set-up for the CLI and the DVC stages: qualitune's own lines, third parties quiet.

A stage's output should be the few lines that say what it did, with progress on long work.
Libraries we build on log a lot at INFO (Great Expectations registers ~400 functions on import,
MLflow and alembic announce migrations, httpx every request); that chatter is WARNING-only unless
asked for. Levels:

- default: qualitune at INFO, third parties at WARNING;
- `-v` / `QUALITUNE_LOG_LEVEL=DEBUG`: everything at DEBUG, third parties included;
- `--quiet` / `QUALITUNE_LOG_LEVEL=WARNING`: warnings and errors only, and no progress output.

`QUALITUNE_LOG_LEVEL` (a level name) wins over the flags, so a DVC stage, which has no flags of its
own, can be made verbose from the shell: `QUALITUNE_LOG_LEVEL=DEBUG dvc repro`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from qualitune.errors import QualituneError

# Loggers of the libraries that print INFO lines nobody asked for during a normal run.
THIRD_PARTY = (
    "great_expectations",
    "mlflow",
    "alembic",
    "httpx",
    "httpcore",
    "urllib3",
    "prefect",
    "optuna",
    "transformers",
    "peft",
    "accelerate",
    "dvc",
    "filelock",
)
FORMAT = "%(levelname)s %(name)s: %(message)s"


class ThirdPartyFilter(logging.Filter):
    """Drops third-party records below WARNING at the handler: some libraries (Great Expectations)
    set INFO on their own child loggers, which a level on the parent logger does not override."""

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return record.levelno >= logging.WARNING or top not in THIRD_PARTY


def level_from(verbose: bool = False, quiet: bool = False) -> int:
    """The qualitune log level for these flags and `QUALITUNE_LOG_LEVEL`."""
    name = os.environ.get("QUALITUNE_LOG_LEVEL", "").strip().upper()
    if name:
        level = logging.getLevelName(name)
        if not isinstance(level, int):
            raise QualituneError(
                f"QUALITUNE_LOG_LEVEL={name!r} is not a log level; use DEBUG, INFO, WARNING or ERROR"
            )
        return level
    if verbose:
        return logging.DEBUG
    return logging.WARNING if quiet else logging.INFO


def setup(verbose: bool = False, quiet: bool = False) -> int:
    """Configure the root handler and per-library levels; returns qualitune's level.

    Quiet mode also silences progress output: `qualitune.progress` reports only when its logger is
    enabled for INFO."""
    level = level_from(verbose, quiet)
    logging.basicConfig(level=level, format=FORMAT)
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:  # also for loggers a library set a level on itself
        for f in [f for f in handler.filters if isinstance(f, ThirdPartyFilter)]:
            handler.removeFilter(f)
        if level > logging.DEBUG:
            handler.addFilter(ThirdPartyFilter())
    logging.getLogger("qualitune").setLevel(level)
    noisy = level > logging.DEBUG
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING) if noisy else level)
    if noisy:
        # transformers keeps its own verbosity (its "[transformers] ..." advice lines): read from the
        # environment at import, so importing it here (slow) is only needed when it already was
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # and its "Loading weights" bars (huggingface_hub's switch, also read at import)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            sys.modules["transformers"].logging.set_verbosity_error()
            sys.modules["transformers"].logging.disable_progress_bar()
        # deprecation advice from libraries, aimed at their developers rather than at our users
        warnings.filterwarnings("ignore", category=FutureWarning)
    return level


__all__ = ["THIRD_PARTY", "ThirdPartyFilter", "level_from", "setup"]
