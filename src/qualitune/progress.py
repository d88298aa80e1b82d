"""Progress lines for long loops: scoring many files, annotating, encoder features, training.

A plain log line (not a bar) about every tenth of the work and at least every 30 s, with the rate
and the time left, so `dvc repro`'s and CI's logs show a stage is alive. Nothing is printed for work
that ends within its first 5 s (a handful of files scored from the CLI or a test stays quiet).
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("qualitune.progress")


def clock(seconds: float) -> str:
    """`m:ss` (or `h:mm:ss`), `?` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


class Progress:
    """`update(done)` after each chunk of `total` units of `what` (e.g. "scoring 938 files")."""

    def __init__(
        self,
        total: int,
        what: str,
        unit: str = "items",
        *,
        start: int = 0,
        logger: logging.Logger | None = None,
    ):
        """`start`: units already done before this run (a resumed training), left out of the rate."""
        self.total, self.what, self.unit, self.start = max(0, int(total)), what, unit, int(start)
        self.log = logger or log
        self.t0 = self.last = time.perf_counter()
        self.next_share = 0.1

    def update(self, done: int, extra: str = "") -> bool:
        """Log a line if one is due; returns whether it did."""
        now = time.perf_counter()
        if self.total == 0 or now - self.t0 < 5:
            return False
        share = done / self.total
        if done < self.total and share < self.next_share and now - self.last < 30:
            return False
        while self.next_share <= share:
            self.next_share += 0.1
        rate = (done - self.start) / (now - self.t0)
        left = (self.total - done) / rate if rate > 0 else float("nan")
        self.log.info(
            "%s: %d/%d %s (%.0f%%), %.1f %s/s, %s elapsed, %s left%s",
            self.what,
            done,
            self.total,
            self.unit,
            100 * share,
            rate,
            self.unit,
            clock(now - self.t0),
            clock(left),
            f", {extra}" if extra else "",
        )
        self.last = now
        return True


__all__ = ["Progress", "clock"]
