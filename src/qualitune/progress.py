"""Progress on long loops: scoring many files, annotating, encoder features, training, trials.

One reporter, two renderings, chosen by where the output goes:
- a terminal (stderr is a TTY): a tqdm bar with the rate, the time left and any extra figures
  (training's loss), drawn after the first 5 s so short work stays silent;
- a log (DVC, CI, a file): a plain line about every tenth of the work and at least every 30 s, so
  `dvc repro`'s and CI's logs show a stage is alive without a line per item.
Nothing at all when the `qualitune.progress` logger is not enabled for INFO (`--quiet`,
`QUALITUNE_LOG_LEVEL=WARNING`). `QUALITUNE_PROGRESS=bar|lines|off` forces a rendering.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time

log = logging.getLogger("qualitune.progress")
DELAY_S = 5.0  # work that ends sooner prints nothing


def clock(seconds: float) -> str:
    """`m:ss` (or `h:mm:ss`), `?` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds + 0.5), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


def rendering(logger: logging.Logger) -> str:
    """`bar`, `lines` or `off` for this logger and the current stderr."""
    forced = os.environ.get("QUALITUNE_PROGRESS", "").strip().lower()
    if forced in ("off", "0", "none"):
        return "off"
    if not logger.isEnabledFor(logging.INFO):
        return "off"
    if forced in ("bar", "lines"):
        return forced
    return "bar" if sys.stderr.isatty() else "lines"


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
        self.mode = rendering(self.log)
        self.t0 = self.last = time.perf_counter()
        self.next_share = 0.1
        self.bar = None
        if self.mode == "bar" and self.total:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total, initial=self.start, desc=what, unit=f" {unit}", delay=DELAY_S,
                dynamic_ncols=True, leave=True, file=sys.stderr,
            )  # fmt: skip

    def update(self, done: int, extra: str = "") -> bool:
        """Report `done` units; returns whether a line was logged (the plain rendering)."""
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if extra:
                self.bar.set_postfix_str(extra, refresh=False)
            if done >= self.total:
                self.close()
            return False
        now = time.perf_counter()
        if self.mode != "lines" or self.total == 0 or now - self.t0 < DELAY_S:
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

    def report(self, done: int, total: int | None = None) -> None:
        """`update` as an `on_progress(done, total)` callback (the total is this reporter's own)."""
        self.update(done)

    def close(self) -> None:
        """End the bar (a no-op for plain lines); safe to call twice."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Progress", "clock", "rendering"]
