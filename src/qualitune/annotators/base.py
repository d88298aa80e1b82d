"""The annotator contract and the registry of no-reference quality annotators.

An annotator maps one 8-bit RGB image to one float. Every annotator states its direction and its
native range so that downstream code (PMOD, which maps scores to the 1-5 scale) never has to guess
whether 3.2 is good or bad. Annotators are registered by name; models are loaded lazily on first
use, so importing this package costs nothing and a missing optional dependency only matters for
the annotator that needs it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import ClassVar

import numpy as np

from qualitune.errors import QualituneError


class AnnotatorError(QualituneError):
    """An annotator cannot score this particular image (too small, flat, ...)."""


class UnknownAnnotatorError(QualituneError):
    """The name is not a known annotator, or its optional dependency is missing."""


class Annotator(ABC):
    """A no-reference quality annotator.

    Subclasses set the class attributes and implement `_score` on a validated image.
    `version` is part of the cache key: bump it whenever the scores of the same image change.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    native_range: ClassVar[tuple[float, float]]
    version: ClassVar[str] = "1"
    min_size: ClassVar[tuple[int, int]] = (1, 1)  # (height, width) below which the method is undefined
    description: ClassVar[str] = ""

    def score(self, rgb: np.ndarray) -> float:
        """Score one HxWx3 uint8 RGB image; raises `AnnotatorError` if the method is undefined for it."""
        check_rgb(rgb)
        h, w = rgb.shape[:2]
        min_h, min_w = self.min_size
        if h < min_h or w < min_w:
            raise AnnotatorError(
                f"image too small for {self.name}: {w}x{h}, needs >= {min_w}x{min_h} (width x height)"
            )
        value = float(self._score(rgb))
        if not math.isfinite(value):
            # e.g. a flat image has no texture statistics at all: say so instead of inventing a score
            raise AnnotatorError(f"{self.name} is undefined for this image (no usable texture statistics)")
        return value

    def score_batch(self, images: Iterable[np.ndarray]) -> list[float]:
        """Score several images; a failure raises, as `score` does (callers wanting per-item
        errors use `qualitune.annotate.annotate_paths`)."""
        return [self.score(img) for img in images]

    @abstractmethod
    def _score(self, rgb: np.ndarray) -> float: ...


def check_rgb(rgb: np.ndarray) -> None:
    """Reject anything that is not an HxWx3 uint8 array: the methods' constants assume 0..255."""
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise QualituneError(
            f"expected an HxWx3 uint8 RGB array, got shape {rgb.shape} dtype {rgb.dtype}; "
            "decode files with qualitune.media.load_image (it converts grey, alpha, CMYK and 16-bit)"
        )
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise QualituneError(f"image has no pixels: shape {rgb.shape}")


_FACTORIES: dict[str, Callable[[], Annotator]] = {}
_AVAILABLE: dict[str, Callable[[], str | None]] = {}
_INSTANCES: dict[str, Annotator] = {}


def register(
    name: str, factory: Callable[[], Annotator], unavailable_reason: Callable[[], str | None] | None = None
) -> None:
    """Register an annotator factory. `unavailable_reason()` returns None when usable, else why not."""
    _FACTORIES[name] = factory
    _AVAILABLE[name] = unavailable_reason or (lambda: None)
