"""The server's settings: the ``serve`` section of params.yaml, with the limits every request obeys."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qualitune.codec import MODES as _MODES
from qualitune.errors import QualituneError

SECTION = "serve"
_KNOWN_KEYS = (
    "host",
    "port",
    "max_request_mb",
    "max_items",
    "max_megapixels",
    "max_pending",
    "mode",
    "batch_size",
)
MB = 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    """Where to listen and what a request may cost. Build it with :meth:`from_params`.

    The limits exist so that no stream of requests, however formed, can make the server hold more than
    about ``max_pending * (2 * max_request_mb + 3 * max_megapixels)`` MB of request data at once (a body
    and its parsed strings, then RGB pixels), on top of the model.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_request_mb: float = 32.0  # request body, base64 included (~4/3 of the files' size)
    max_items: int = 64  # rows per request
    max_megapixels: float = 100.0  # decoded pixels per request, images and video frames together
    max_pending: int = 4  # requests admitted at once (reading, decoding, scoring or waiting)
    mode: str = "expected"  # default scoring mode; a request's params.mode overrides it
    batch_size: int = 8  # default model batch; params.batch_size overrides it (<= max_items)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise QualituneError(f"{SECTION}.host must be a host name or address, got {self.host!r}")
        if not is_int(self.port) or not 0 <= self.port <= 65535:
            raise QualituneError(
                f"{SECTION}.port must be an integer in 0..65535 (0: any free port), got {self.port!r}"
            )
        for key in ("max_request_mb", "max_megapixels"):
            value = getattr(self, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise QualituneError(f"{SECTION}.{key} must be a number > 0, got {value!r}")
        for key in ("max_items", "max_pending", "batch_size"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise QualituneError(f"{SECTION}.{key} must be an integer >= 1, got {value!r}")
        if self.mode not in _MODES:
            raise QualituneError(f"{SECTION}.mode must be one of {list(_MODES)}, got {self.mode!r}")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> ServeSettings:
        """The ``serve`` section of params.yaml (optional: defaults), then ``overrides`` that are not None
        (the command line's flags)."""
        from qualitune.config import checked_section

        raw = dict(checked_section(params, SECTION, _KNOWN_KEYS))
        raw.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(raw) - set(_KNOWN_KEYS))
        if unknown:
            raise QualituneError(f"unknown serve setting(s) {unknown}; known: {list(_KNOWN_KEYS)}")
        return cls(**{k: v for k, v in raw.items() if v is not None})


def is_int(value: Any) -> bool:
    """An integer that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
