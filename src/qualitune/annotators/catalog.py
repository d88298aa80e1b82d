"""Finding annotators by name: the built-in ones, and those registered by optional packages.

Kept apart from :mod:`qualitune.annotators.base` (the contract and :func:`~.base.register`) because
the lookup imports every built-in annotator module, and those import the contract: with both in one
module, each annotator module and the module it registers in imported each other.
"""

from __future__ import annotations

from collections.abc import Iterable

from qualitune.annotators.base import _AVAILABLE, _FACTORIES, _INSTANCES, Annotator, UnknownAnnotatorError
from qualitune.errors import QualituneError


def _ensure_builtin() -> None:
    # Registration lives in the annotator modules: importing them runs their `register` calls.
    from qualitune.annotators import brisque, fast, learned, niqe, piqe  # noqa: F401


def available_annotators() -> list[str]:
    """Names usable here (optional ones only when their dependency is importable), sorted."""
    _ensure_builtin()
    return sorted(n for n, why in _AVAILABLE.items() if why() is None)


def get_annotator(name: str) -> Annotator:
    """The (per-process cached) annotator called `name`, or `UnknownAnnotatorError` saying why not."""
    _ensure_builtin()
    if name in _INSTANCES:
        return _INSTANCES[name]
    if name not in _FACTORIES:
        raise UnknownAnnotatorError(f"unknown annotator {name!r}; known: {', '.join(available_annotators())}")
    why = _AVAILABLE[name]()
    if why is not None:
        raise UnknownAnnotatorError(f"annotator {name!r} is not available here: {why}")
    inst = _FACTORIES[name]()
    _INSTANCES[name] = inst
    return inst


def resolve_annotators(names: Iterable[str]) -> list[Annotator]:
    """Validate a list of names up front (so a typo fails before hours of scoring), keeping order."""
    names = list(names)
    if not names:
        raise QualituneError(f"no annotator given; known: {', '.join(available_annotators())}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise QualituneError(f"annotator(s) listed twice: {', '.join(dupes)}")
    return [get_annotator(n) for n in names]
