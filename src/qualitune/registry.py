"""Compatibility names for code written against the old ``qualitune.registry`` module.

The registry module once held four concerns; they now live in :mod:`qualitune.gate` (settings, the
promotion decision, log-and-register), :mod:`qualitune.store` (registry references, downloads, the
cache) and :mod:`qualitune.codec` (bytes to media, pyfunc input values). Models registered before the
split run a copy of ``pyfunc_model.py`` that imports ``input_values`` and ``score_encoded`` from here,
so this module must stay importable for them; new code imports from the modules above.
"""

from qualitune.codec import decode_base64, decode_media, encode_file, input_values, score_encoded
from qualitune.gate import CHALLENGER, CHAMPION, Decision, RegisterSettings, decide, log_and_register
from qualitune.store import cache_root, download_run_scorer, download_scorer, parse_model_uri

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Decision",
    "RegisterSettings",
    "cache_root",
    "decide",
    "decode_base64",
    "decode_media",
    "download_run_scorer",
    "download_scorer",
    "encode_file",
    "input_values",
    "log_and_register",
    "parse_model_uri",
    "score_encoded",
]
