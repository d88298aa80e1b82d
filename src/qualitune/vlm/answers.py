"""Parsing the model's answers, strictly, and counting what does not parse.

The prompt asks for a bare integer in a range (IOVQA) or one of five quality words (Q-Align).
Anything else is a parse failure that is *recorded*, never replaced by a guess: one peer
substitutes a random score for unparseable answers, which hides exactly the failures an
evaluation should expose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LEVELS: tuple[str, ...] = ("bad", "poor", "fair", "good", "excellent")
"""The five quality levels, worst to best (ITU absolute category rating words, as in Q-Align)."""

_INTEGER = re.compile(r"\d+")
_DECIMAL = re.compile(r"\d\.\d")


def parse_integer(text: str, lo: int, hi: int) -> int | None:
    """The integer `text` consists of, if it lies in [lo, hi]; otherwise None.

    Surrounding whitespace (and a trailing end-of-turn newline) is tolerated; signs, decimals,
    words, units or several numbers are not; nor are signs ("35.", "35/50", "score: 35" -> None).
    """
    stripped = text.strip()
    if not _INTEGER.fullmatch(stripped):
        return None
    value = int(stripped)
    return value if lo <= value <= hi else None


def parse_decimal(text: str, lo: float, hi: float) -> float | None:
    """A one-decimal number such as "3.5" in [lo, hi] (IOVQA's decimal baseline); else None."""
    stripped = text.strip()
    if not _DECIMAL.fullmatch(stripped):
        return None
    value = float(stripped)
    return value if lo <= value <= hi else None


def parse_level(text: str) -> int | None:
    """Index 0-4 of the quality word `text` consists of (case-insensitive, trailing '.' allowed)."""
    word = text.strip().rstrip(".").strip().lower()
    return LEVELS.index(word) if word in LEVELS else None


@dataclass
class ParseReport:
    """Tally of parsed answers; keeps every raw text that failed, with its item index."""

    total: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)

    def add(self, index: int, raw: str, parsed: float | None) -> float | None:
        """Record one answer and return `parsed` unchanged (None stays None)."""
        self.total += 1
        if parsed is None:
            self.failures.append((index, raw))
        return parsed

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def failure_rate(self) -> float:
        return self.n_failed / self.total if self.total else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "answers": self.total,
            "parse_failures": self.n_failed,
            "parse_failure_rate": self.failure_rate,
        }
