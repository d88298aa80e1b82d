"""No-reference image quality annotators ("machine annotators" of PMOD).

Use `get_annotator(name).score(rgb)` for one image and `qualitune.annotate.annotate_paths` for files.
"""

from qualitune.annotators.base import Annotator, AnnotatorError, UnknownAnnotatorError
from qualitune.annotators.catalog import available_annotators, get_annotator, resolve_annotators

__all__ = [
    "Annotator",
    "AnnotatorError",
    "UnknownAnnotatorError",
    "available_annotators",
    "get_annotator",
    "resolve_annotators",
]
