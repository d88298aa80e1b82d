"""Media sent as bytes, and the values of an MLflow model input: what the pyfunc and the server share.

A client sends whole files, base64-encoded, in an ``image`` column (MLflow's wire format); nothing is
ever read from a server-side path. :func:`decode_base64` turns a value into bytes (standard or
URL-safe alphabet, ``data:`` URLs, missing padding), :func:`decode_media` the bytes into a decoded
RGB image or video frames (videos recognised by their container signature), :func:`input_values`
pulls the ``image`` values out of what MLflow hands a pyfunc, and :func:`score_encoded` scores them
with per-row errors. The HTTP server (:mod:`qualitune.serving`) parses the JSON body itself, with
its limits, and then decodes with the same functions and reads the ``inputs`` form with
:func:`image_column`.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualitune.errors import QualituneError
from qualitune.media import MediaError

if TYPE_CHECKING:
    from qualitune.scorer import Scorer

IMAGE_COLUMN = "image"  # the input column (MLflow signature) that holds a file's base64 bytes
MODES = ("expected", "greedy")


def image_column(mapping: Mapping[str, Any], what: str) -> list[Any]:
    """The ``image`` values of a column mapping ``{"image": value | [values]}``: a pyfunc dict input, or
    the server's ``inputs`` form. One value (a string, bytes, an object) is one row."""
    if IMAGE_COLUMN not in mapping:
        raise QualituneError(
            f"{what} has no {IMAGE_COLUMN!r} key (base64 file bytes); keys: {sorted(map(str, mapping))[:20]}"
        )
    col = mapping[IMAGE_COLUMN]
    if isinstance(col, (str, bytes, Mapping)) or not isinstance(col, Iterable):
        return [col]
    return list(col)


def decode_base64(value: Any) -> bytes:
    """File bytes from a base64 string (standard or URL-safe alphabet, optional ``data:...;base64,``
    prefix, whitespace and missing padding tolerated). Raw ``bytes`` pass through. Raises MediaError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise MediaError("no image given (empty value)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            header, sep, text = text.partition(",")
            if not sep or not header.endswith(";base64"):
                raise MediaError("data URL is not base64-encoded (expected data:<type>;base64,<data>)")
        text = "".join(text.split())
        if not text:
            raise MediaError("empty image string")
        text += "=" * (-len(text) % 4)
        altchars = b"-_" if ("-" in text or "_" in text) else None
        try:
            data = base64.b64decode(text, altchars=altchars, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"not valid base64 ({exc})") from exc
    else:
        raise MediaError(f"expected a base64-encoded file as a string, got {type(value).__name__}")
    if not data:
        raise MediaError("empty file")
    return data


def sniff_video_suffix(data: bytes) -> str | None:
    """The file suffix of a video container recognised from its first bytes, or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return ".mov" if data[8:12] == b"qt  " else ".mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return ".webm" if b"webm" in data[:64] else ".mkv"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ".avi"
    if data[:3] == b"FLV":
        return ".flv"
    if data[:4] == b"\x00\x00\x01\xba":
        return ".mpg"
    return None


def decode_image_bytes(data: bytes) -> Any:
    """A fully decoded 8-bit RGB PIL image, or MediaError (never a half-decoded image)."""
    from PIL import Image

    from qualitune.media import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                rgb = to_rgb(img)
    except Exception as exc:
        raise MediaError(
            "cannot decode: not an image PIL reads, nor an MP4/MOV, Matroska/WebM, AVI, FLV or MPEG video "
            f"({type(exc).__name__}: {re.sub(r'<_io.BytesIO object at 0x[0-9a-f]+>', 'the data', str(exc))})"
        ) from exc
    if rgb.width < 1 or rgb.height < 1:
        raise MediaError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


def decode_media(data: bytes, *, n_frames: int = 2) -> tuple[str, Any]:
    """``("image", PIL image)`` or ``("video", [n_frames PIL frames])`` from a file's bytes.

    Videos are recognised by their container signature and read through a private temporary file
    (PyAV needs one), removed at once; error messages never show its path."""
    from qualitune.media import load_media

    suffix = sniff_video_suffix(data)
    if suffix is None:
        return "image", decode_image_bytes(data)
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="qualitune-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            frames = load_media(name, n_frames=n_frames)
        except MediaError as exc:
            raise MediaError(str(exc).replace(name, f"{suffix[1:]} video")) from None
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass
    return "video", list(frames)


def input_values(model_input: Any) -> Sequence[Any]:
    """The ``image`` values of a pyfunc input: a DataFrame/dict with an ``image`` column, a list, a
    Series or a single string."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise QualituneError(
                f"input needs an {IMAGE_COLUMN!r} column (base64 file bytes); got {list(model_input.columns)}"
            )
        return model_input[IMAGE_COLUMN].tolist()
    if isinstance(model_input, Mapping):
        return image_column(model_input, "input")
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, (str, bytes)):
        return [model_input]
    return list(model_input)


def score_encoded(
    scorer: Scorer, values: Iterable[Any], *, mode: str = "expected", batch_size: int = 8
) -> list[dict[str, Any]]:
    """Score base64-encoded files: one dict per value, in order, with ``score``, ``score_1_5``,
    ``levels``, ``mode`` and ``error`` (None when scored). A value that does not decode gets
    ``score: None`` and the reason; the others are still scored, in batches of ``batch_size``."""
    from qualitune.vlm.answers import ParseReport

    if mode not in MODES:
        raise QualituneError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise QualituneError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    values = list(values)
    results: list[dict[str, Any]] = [
        {"score": None, "score_1_5": None, "levels": None, "mode": mode, "error": None} for _ in values
    ]
    ok: list[tuple[int, Any, str]] = []
    for i, v in enumerate(values):
        try:
            kind, item = decode_media(decode_base64(v), n_frames=scorer.spec.n_frames)
        except MediaError as exc:
            results[i]["error"] = str(exc)
            continue
        results[i]["media"] = kind
        ok.append((i, item, kind))
    scorer.score_into(results, ok, mode=mode, batch_size=batch_size, report=ParseReport())
    return results


def encode_file(path: str | Path) -> str:
    """Base64 text of a file: what a client puts in the ``image`` column."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
