"""Quiet by default, loud on request: qualitune's own lines at INFO, third parties at WARNING,
progress as plain lines in logs, a bar on a terminal, nothing with --quiet."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from qualitune import logs, progress
from qualitune.progress import Progress

# what the validate stage does: import GX (it registers ~400 functions at INFO) and open a context
# (its child logger, set to INFO by GX itself, announces a temporary docs directory)
GX_IMPORT = (
    "from qualitune.logs import setup; setup(); import great_expectations as gx; "
    "gx.get_context(mode='ephemeral')"
)


def _import_gx(env_level: str | None) -> str:
    env = {k: v for k, v in __import__("os").environ.items() if k != "QUALITUNE_LOG_LEVEL"}
    if env_level:
        env["QUALITUNE_LOG_LEVEL"] = env_level
    res = subprocess.run(
        [sys.executable, "-c", GX_IMPORT], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_great_expectations_import_chatter_is_off_by_default_and_back_with_debug() -> None:
    assert "great_expectations" not in _import_gx(None)
    assert "Skipping registering function" in _import_gx("DEBUG")


def test_levels_from_flags_and_environment(monkeypatch) -> None:
    monkeypatch.delenv("QUALITUNE_LOG_LEVEL", raising=False)
    assert logs.level_from() == logging.INFO
    assert logs.level_from(verbose=True) == logging.DEBUG
    assert logs.level_from(quiet=True) == logging.WARNING
    monkeypatch.setenv("QUALITUNE_LOG_LEVEL", "error")
    assert logs.level_from(verbose=True) == logging.ERROR  # the environment wins over the flags
    monkeypatch.setenv("QUALITUNE_LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match="not a log level"):
        logs.level_from()


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_about_every_tenth_and_nothing_for_short_work(monkeypatch, caplog) -> None:
    clock = _Clock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    monkeypatch.setenv("QUALITUNE_PROGRESS", "lines")
    caplog.set_level(logging.INFO, logger="qualitune.progress")
    short = Progress(100, "short", "files")
    clock.t = 1.0
    assert not short.update(100)  # done within 5 s: silent
    p = Progress(100, "scoring", "files")
    lines = 0
    for done in range(1, 101):
        clock.t += 0.1 + 5 * (done == 1)
        lines += p.update(done, "loss 0.5")
    assert 9 <= lines <= 11
    last = caplog.records[-1].getMessage()
    assert last.startswith("scoring: 100/100 files (100%)") and "left" in last and last.endswith("loss 0.5")


def test_quiet_means_no_progress_at_all(monkeypatch, caplog) -> None:
    monkeypatch.delenv("QUALITUNE_PROGRESS", raising=False)
    logger = logging.getLogger("qualitune.progress.test")
    logger.setLevel(logging.WARNING)
    p = Progress(10, "scoring", logger=logger)
    assert p.mode == "off" and p.bar is None
    monkeypatch.setenv("QUALITUNE_PROGRESS", "off")
    assert Progress(10, "scoring").mode == "off"


def test_a_terminal_gets_a_tqdm_bar(monkeypatch, capsys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="qualitune.progress")
    monkeypatch.setenv("QUALITUNE_PROGRESS", "bar")
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    with Progress(4, "annotating", "files") as p:
        assert p.bar is not None
        for done in range(1, 5):
            p.update(done, "loss 0.1")
    assert p.bar is None  # closed once done
    err = capsys.readouterr().err
    assert "annotating" in err and "4/4" in err
