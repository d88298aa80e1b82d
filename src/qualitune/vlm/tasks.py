"""What the model is asked and what it must answer: answer formats, prompts and training examples.

One `AnswerFormat` serves training and scoring alike, so the answer a model is trained to give is
exactly the one the scorers look for:

- `integer` (IOVQA): a bare integer in [lo, hi], e.g. "35"; the integer-only mask keeps the loss on
  its digit tokens.
- `decimal` (IOVQA's ablation baseline): "3.5" on the 1.0-5.0 scale; the "." is a token of its own.
- `level` (Q-Align / VITAL): "The quality of the image is good." -- one of five ITU words, whose
  softmax over the five word tokens gives a distribution to match with a PMOD.

Tasks (`Example.task`): `score` (media -> answer in the format), `compare` (two images -> "first"
or "second", VITAL's pairwise task), `describe` (media -> attribute description, VITAL's text task
and two-stage's first stage) and `score_text` (description only -> answer, two-stage's second stage).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError
from qualitune.labels import LEVEL_WORDS, LabelRange, to_decimal_text, to_integer
from qualitune.manifest import NORM_MAX, NORM_MIN

FormatKind = Literal["integer", "decimal", "level"]
TASKS = ("score", "compare", "describe", "score_text")


@dataclass(frozen=True)
class AnswerFormat:
    """How a quality answer is written, prompted for, parsed and mapped back to the 1-5 scale."""

    kind: FormatKind = "integer"
    lo: int = 10
    hi: int = 50

    def __post_init__(self) -> None:
        if self.kind not in ("integer", "decimal", "level"):
            raise QualituneError(f"answer format must be integer, decimal or level, got {self.kind!r}")
        if self.kind == "integer":
            LabelRange(self.lo, self.hi)  # validates the range
            if self.lo < 0:
                raise QualituneError(f"integer labels must be >= 0 (a sign is not a digit), got lo={self.lo}")

    # -- answer text -------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """Text the assistant turn starts with before the value (empty for bare numbers)."""
        return "The quality of the image is" if self.kind == "level" else ""

    @property
    def suffix(self) -> str:
        return "." if self.kind == "level" else ""

    def candidates(self) -> list[tuple[str, float]]:
        """Every valid value text and its number on this format's scale (the trie `expected` walks)."""
        if self.kind == "integer":
            return [(str(k), float(k)) for k in range(self.lo, self.hi + 1)]
        if self.kind == "decimal":
            return [(f"{t // 10}.{t % 10}", t / 10) for t in range(10, 51)]
        return [(" " + w, float(i + 1)) for i, w in enumerate(LEVEL_WORDS)]

    @property
    def scale(self) -> tuple[float, float]:
        """The range of scores this format produces."""
        return (float(self.lo), float(self.hi)) if self.kind == "integer" else (1.0, 5.0)

    def to_norm(self, score):
        """A score on this format's scale -> the 1-5 scale of `mos_norm`."""
        lo, hi = self.scale
        return NORM_MIN + (np.asarray(score, dtype=np.float64) - lo) / (hi - lo) * (NORM_MAX - NORM_MIN)

    def values(self, mos_norm: Sequence[float]) -> list[str]:
        """Training value texts for these mos_norm (1-5), e.g. "35", "3.5" or " good"."""
        m = np.asarray(mos_norm, dtype=np.float64)
        if self.kind == "integer":
            return [str(int(v)) for v in to_integer(m, LabelRange(self.lo, self.hi))]
        if self.kind == "decimal":
            return to_decimal_text(m)
        return [" " + LEVEL_WORDS[i] for i in level_of(m)]

    def first_token_bins(self) -> list[tuple[str, float, float]]:
        """`(text, lowest, highest)` per first token of the valid values, in scale order: the five
        level words, or the leading digits of integers/decimals ("3" covers 30-39 on [10, 50]).

        The first token decides most of an answer's value; a soft label (`soft_targets`) is a
        distribution over these bins. Integers must all have the same number of digits, else a
        leading "1" would mean both 1 and 10-19."""
        if self.kind == "integer" and len(str(self.lo)) != len(str(self.hi)):
            raise QualituneError(
                f"soft labels over the first digit need integers of one length; [{self.lo}, {self.hi}] "
                "mixes digit counts: use e.g. [10, 50] or [1, 9]"
            )
        bins: dict[str, list[float]] = {}
        for text, value in self.candidates():
            key = text if self.kind == "level" else text[0]
            bins.setdefault(key, []).append(value)
        return [(key, min(v), max(v)) for key, v in bins.items()]

    def soft_targets(self, mos_norm: Sequence[float], sigma: float) -> np.ndarray:
        """`(N, K)`: a Gaussian of width `sigma` (on the 1-5 scale) around each MOS, integrated over
        the `first_token_bins` (the mass beyond either end goes to the end bins). Soft labels give
        every answer token an ordinal gradient (a "3" for a 4 costs less than a "1"), where a hard
        digit target is right or wrong."""
        from scipy.special import ndtr

        if not sigma > 0:
            raise QualituneError(f"the soft-label width must be > 0, got {sigma}")
        lo, hi = self.scale
        unit = (hi - lo) / (NORM_MAX - NORM_MIN)
        half = {"integer": 0.5, "decimal": 0.05, "level": 0.5}[self.kind]
        x = lo + (np.asarray(mos_norm, dtype=np.float64) - NORM_MIN) * unit
        bins = self.first_token_bins()
        edges = np.array([b[1] - half for b in bins[1:]], dtype=np.float64)
        cdf = ndtr((edges[None, :] - x[:, None]) / (sigma * unit))
        cdf = np.concatenate([np.zeros((len(x), 1)), cdf, np.ones((len(x), 1))], axis=1)
        return np.diff(cdf, axis=1)

    def answer(self, value: str) -> tuple[str, str, str]:
        return (self.prefix, value, self.suffix)

    def parse(self, text: str) -> float | None:
        """The value a generated answer states, or None; strict (see `qualitune.vlm.answers`)."""
        from qualitune.vlm.answers import parse_decimal, parse_integer, parse_level

        body = text.strip()
        if self.kind == "level":
            if body.lower().startswith(self.prefix.lower()):
                body = body[len(self.prefix) :]
            idx = parse_level(body)
            return None if idx is None else float(idx + 1)
        if self.kind == "integer":
            v = parse_integer(body, self.lo, self.hi)
            return None if v is None else float(v)
        return parse_decimal(body, 1.0, 5.0)

    # -- prompts -----------------------------------------------------------------------------------
    def question(self, media: str = "image") -> str:
        """The scoring question for an image or a video (IOVQA constrains the answer's form)."""
        if self.kind == "integer":
            return (
                f"Rate the visual quality of this {media} on an integer scale from {self.lo} to {self.hi}, "
                f"where {self.lo} is the worst and {self.hi} the best quality. Answer with the integer only."
            )
        if self.kind == "decimal":
            return (
                f"Rate the visual quality of this {media} on a scale from 1.0 to 5.0 with one decimal, "
                "where 1.0 is the worst and 5.0 the best quality. Answer with the number only."
            )
        return f"How would you rate the quality of this {media}?"

    def question_from_description(self, description: str, media: str = "image") -> str:
        """Two-stage's second stage: the same question, answered from a description alone."""
        return (
            f"An {media} has these visual quality attributes: {description}. "
            f"Judging only from this description, answer the question. {self.question(media)}"
        )

    def to_dict(self) -> dict:
        return {"kind": self.kind, "lo": self.lo, "hi": self.hi}


def level_of(mos_norm) -> np.ndarray:
    """mos_norm -> level index 0..4 by the nearest level centre 1..5 (Q-Align's inverse mapping)."""
    m = np.clip(np.asarray(mos_norm, dtype=np.float64), NORM_MIN, NORM_MAX)
    return np.clip(np.floor(m - NORM_MIN + 0.5), 0, 4).astype(np.int64)


DESCRIBE_QUESTION = (
    "Describe the visual quality of this {media}: sharpness, noise, compression artefacts, "
    "exposure and colour."
)
COMPARE_QUESTION = "Which of the two images has better quality? Answer first or second."
COMPARE_ANSWERS = ("first", "second")


@dataclass(frozen=True)
class Example:
    """One training example. `media` are file paths (none for text-only examples).

    `levels` is the target distribution over the five levels (a PMOD) for the KL term of a `level`
    format score example; `weight` multiplies the example's loss.
    """

    task: str
    media: tuple[str, ...]
    prompt: str
    answer: tuple[str, str, str]
    item_id: str
    levels: tuple[float, ...] | None = None
    weight: float = 1.0
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def _media_word(kind: str) -> str:
    return "video" if kind == "video" else "image"


def _check_columns(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise QualituneError(
            f"{what} needs manifest columns {missing}; run the labels/pmod stages first (dvc repro pmod)"
        )


PMOD_COLUMNS = [f"pmod_p{i}" for i in range(1, 6)]


def score_examples(
    df: pd.DataFrame,
    fmt: AnswerFormat,
    *,
    target: Literal["mos", "pmod"] = "mos",
    weight: float = 1.0,
    label_sigma: float = 0.0,
) -> list[Example]:
    """Media -> quality answer. `target="pmod"` trains on the machine opinion (VITAL's pretraining:
    value from the PMOD mean, KL towards the PMOD); "mos" on human labels (IOVQA). `label_sigma` > 0
    with `target="mos"` adds a soft label: a KL towards `fmt.soft_targets` over the answer's first
    token (`levels`), beside the CE on the value."""
    cols = ["item_id", "path", "media", "mos_norm"] + (
        ["pmod_mean", *PMOD_COLUMNS] if target == "pmod" else []
    )
    _check_columns(df, cols, "score examples")
    source = df["pmod_mean"] if target == "pmod" else df["mos_norm"]
    if source.isna().any():
        raise QualituneError(f"{int(source.isna().sum())} items have no {target} value; fix or exclude them")
    values = fmt.values(source.to_numpy())
    levels = df[PMOD_COLUMNS].to_numpy(dtype=np.float64) if "pmod_p1" in df.columns else None
    soft = label_sigma > 0 and target == "mos"
    if soft:
        levels = fmt.soft_targets(source.to_numpy(), label_sigma)
    out = []
    for i, row in enumerate(df.itertuples(index=False)):
        lv = (
            tuple(float(x) for x in levels[i])
            if levels is not None and (soft or fmt.kind == "level")
            else None
        )
        out.append(
            Example(
                "score",
                (str(row.path),),
                fmt.question(_media_word(row.media)),
                fmt.answer(values[i]),
                str(row.item_id),
                levels=lv,
                weight=weight,
            )
        )
    return out


def describe_examples(df: pd.DataFrame, *, weight: float = 1.0) -> list[Example]:
    """Media -> attribute description (from the machine annotators, `qualitune.pmod.describe`)."""
    _check_columns(df, ["item_id", "path", "media", "description"], "describe examples")
    return [
        Example(
            "describe",
            (str(r.path),),
            DESCRIBE_QUESTION.format(media=_media_word(r.media)),
            ("", str(r.description), ""),
            str(r.item_id),
            weight=weight,
        )
        for r in df.itertuples(index=False)
        if isinstance(r.description, str) and r.description
    ]


def score_text_examples(df: pd.DataFrame, fmt: AnswerFormat, *, weight: float = 1.0) -> list[Example]:
    """Description only -> quality answer (two-stage's second stage); no media is shown."""
    _check_columns(df, ["item_id", "media", "mos_norm", "description"], "two-stage examples")
    values = fmt.values(df["mos_norm"].to_numpy())
    return [
        Example(
            "score_text",
            (),
            fmt.question_from_description(str(r.description), _media_word(r.media)),
            fmt.answer(values[i]),
            str(r.item_id),
            weight=weight,
        )
        for i, r in enumerate(df.itertuples(index=False))
    ]


def compare_examples(
    df: pd.DataFrame,
    *,
    margin: float = 0.5,
    pairs_per_item: int = 1,
    seed: int = 0,
    weight: float = 1.0,
) -> list[Example]:
    """VITAL's pairwise task: pairs whose PMOD means differ by at least `margin` (on 1-5).

    Each item is paired with `pairs_per_item` random partners that clear the margin; which image
    comes first is random, so "first" and "second" are balanced. Items with no partner clear of
    the margin are skipped (and counted in the caller's log via the returned length).
    """
    _check_columns(df, ["item_id", "path", "pmod_mean"], "compare examples")
    if margin < 0:
        raise QualituneError(f"compare margin must be >= 0, got {margin}")
    rng = np.random.default_rng(seed)
    means = df["pmod_mean"].to_numpy(dtype=np.float64)
    paths = df["path"].astype(str).to_numpy()
    ids = df["item_id"].astype(str).to_numpy()
    out = []
    for i in range(len(df)):
        partners = np.flatnonzero(np.abs(means - means[i]) >= max(margin, 1e-9))
        if len(partners) == 0:
            continue
        for j in rng.choice(partners, size=min(pairs_per_item, len(partners)), replace=False):
            a, b = (i, int(j)) if rng.random() < 0.5 else (int(j), i)
            better = "first" if means[a] > means[b] else "second"
            out.append(
                Example(
                    "compare",
                    (paths[a], paths[b]),
                    COMPARE_QUESTION,
                    ("", better, ""),
                    f"{ids[a]}|{ids[b]}",
                    weight=weight,
                )
            )
    return out


__all__ = [
    "COMPARE_QUESTION",
    "DESCRIBE_QUESTION",
    "AnswerFormat",
    "Example",
    "TASKS",
    "compare_examples",
    "describe_examples",
    "level_of",
    "score_examples",
    "score_text_examples",
]
