"""MLflow's ``/invocations`` wire format, checked: content type, a bounded body, the request's rows and
params, and every row decoded (with a pixel budget) before anything is scored.

Every refusal is a :class:`RequestError` with the HTTP status, MLflow's error code, a message that says
what to send instead (never echoing the body, which may be megabytes of base64) and, where rows are
at fault, the list of them.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from qualitune.codec import IMAGE_COLUMN, decode_base64, decode_media, image_column, sniff_video_suffix
from qualitune.codec import MODES as _MODES
from qualitune.media import MediaError
from qualitune.serving.settings import MB, ServeSettings, is_int

_PARAMS = ("mode", "batch_size")
# MLflow's request keys (mlflow.pyfunc.scoring_server): exactly one per request, plus optional params.
DF_RECORDS, DF_SPLIT, INSTANCES, INPUTS = "dataframe_records", "dataframe_split", "instances", "inputs"
INPUT_KEYS = (DF_RECORDS, DF_SPLIT, INSTANCES, INPUTS)
_EXAMPLE = '{"dataframe_records": [{"image": "<base64 of the file>"}]}'


class RequestError(Exception):
    """A request the server refuses: HTTP status, MLflow-style error code, message, optional per-row list."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        error_code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.error_code = error_code or _ERROR_CODES.get(status, "BAD_REQUEST")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error_code": self.error_code, "message": self.message}
        if self.errors is not None:
            out["errors"] = self.errors
        return out


_ERROR_CODES = {
    400: "BAD_REQUEST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
}


@dataclass
class ParsedRequest:
    """The ``image`` value of every row, in order, and the scoring params."""

    values: list[Any]
    mode: str
    batch_size: int


def check_content_type(content_type: str | None) -> None:
    """JSON only (MLflow's CSV and parquet bodies cannot carry file bytes sensibly). A missing header is
    taken as JSON; anything else is a 415 that says which header to send."""
    if not content_type:
        return
    mime, _, rest = content_type.partition(";")
    mime = mime.strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise RequestError(
            415,
            f"unsupported Content-Type {content_type!r}: send JSON with 'Content-Type: application/json' "
            f"(e.g. {_EXAMPLE})",
        )
    charset = dict(
        (k.strip().lower(), v.strip().strip('"').lower())
        for k, _, v in (p.partition("=") for p in rest.split(";"))
        if k.strip()
    ).get("charset", "utf-8")
    if charset not in ("utf-8", "utf8"):
        raise RequestError(415, f"unsupported charset {charset!r}: the body must be UTF-8 JSON")


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The request body, never more than ``limit`` bytes of it.

    A declared Content-Length above the limit is refused before anything is read; a body without one
    (chunked) or one that lies is read chunk by chunk and dropped as soon as it passes the limit."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError(400, f"Content-Length is not a number: {content_length[:40]!r}") from None
        if declared > limit:
            raise _too_large(f"the request body is {declared / MB:.1f} MB", limit)
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise _too_large(f"the request body passed {limit / MB:g} MB", limit)
    return bytes(buf)


def _too_large(what: str, limit: int) -> RequestError:
    return RequestError(
        413,
        f"{what}; the limit is {limit / MB:g} MB (serve.max_request_mb). Send fewer or smaller files per "
        "request; base64 makes a file about 4/3 of its size",
        headers={"Connection": "close"},  # the rest of the body is not read: this connection is done
    )


def parse_request(body: bytes, settings: ServeSettings) -> ParsedRequest:
    """Check a JSON body against MLflow's input formats and return the rows' ``image`` values.

    Every message says what was expected; none echoes the body (it may be megabytes of base64)."""
    if not body.strip():
        raise RequestError(400, f"empty request body; send JSON such as {_EXAMPLE}")
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(
            400, f"the request body is not valid JSON ({short(exc)}); send {_EXAMPLE}"
        ) from None
    if not isinstance(payload, dict):
        raise RequestError(
            400,
            f"the request body must be a JSON object with one of {list(INPUT_KEYS)}, got {_kind(payload)}",
        )
    keys = [k for k in payload if k in INPUT_KEYS]
    unknown = sorted(k for k in payload if k not in INPUT_KEYS and k != "params")
    if unknown:
        raise RequestError(
            400, f"unknown key(s) {unknown} in the request; allowed: {list(INPUT_KEYS)} and 'params'"
        )
    if len(keys) != 1:
        raise RequestError(
            400,
            f"the request needs exactly one of {list(INPUT_KEYS)}, got {keys or 'none'}; e.g. {_EXAMPLE}",
        )
    values, missing = _image_values(keys[0], payload[keys[0]])
    if not values and not missing:
        raise RequestError(400, f"no rows to score in {keys[0]!r}")
    n = len(values) + len(missing)
    if n > settings.max_items:
        raise RequestError(
            413,
            f"{n} rows in one request; the limit is {settings.max_items} (serve.max_items): split the batch",
        )
    if missing:
        if len(missing) == n:
            raise RequestError(
                400,
                f"no row has an {IMAGE_COLUMN!r} value; each row needs {IMAGE_COLUMN!r}: the base64 bytes of "
                f"an image or video file ({missing[0]['error']})",
                errors=missing,
            )
        raise RequestError(
            400,
            f"{len(missing)} of {n} rows have no {IMAGE_COLUMN!r} value; nothing was scored",
            errors=missing,
        )
    mode, batch_size = _params(payload.get("params"), settings)
    return ParsedRequest([v for _, v in sorted(values)], mode, batch_size)


def _image_values(key: str, data: Any) -> tuple[list[tuple[int, Any]], list[dict[str, Any]]]:
    """``[(row, value)]`` of the rows that have an image value and ``[{"row", "error"}]`` of those without."""
    values: list[tuple[int, Any]] = []
    missing: list[dict[str, Any]] = []

    def from_records(rows: Any, what: str) -> None:
        if not isinstance(rows, list):
            raise RequestError(400, f"{what!r} must be a list of rows, got {_kind(rows)}")
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                if IMAGE_COLUMN in row:
                    values.append((i, row[IMAGE_COLUMN]))
                else:
                    missing.append(
                        {"row": i, "error": f"no {IMAGE_COLUMN!r} field; fields: {sorted(row)[:20]}"}
                    )
            elif what == INSTANCES and isinstance(row, str):  # TF-serving style: a list of plain values
                values.append((i, row))
            else:
                missing.append(
                    {"row": i, "error": f"a row must be an object with {IMAGE_COLUMN!r}, got {_kind(row)}"}
                )

    if key in (DF_RECORDS, INSTANCES):
        from_records(data, key)
    elif key == DF_SPLIT:
        if not isinstance(data, dict) or not isinstance(data.get("columns"), list) or "data" not in data:
            raise RequestError(
                400, f"{DF_SPLIT!r} must be an object with 'columns' (a list) and 'data' (a list of rows)"
            )
        columns, rows = data["columns"], data["data"]
        if IMAGE_COLUMN not in columns:
            raise RequestError(
                400, f"{DF_SPLIT!r} has no {IMAGE_COLUMN!r} column; columns: {[str(c) for c in columns][:20]}"
            )
        if not isinstance(rows, list):
            raise RequestError(400, f"{DF_SPLIT}.data must be a list of rows, got {_kind(rows)}")
        col = columns.index(IMAGE_COLUMN)
        for i, row in enumerate(rows):
            if isinstance(row, list) and len(row) == len(columns):
                values.append((i, row[col]))
            else:
                missing.append(
                    {
                        "row": i,
                        "error": f"a row must be a list of {len(columns)} values (one per column), got {_kind(row)}",
                    }
                )
    else:  # INPUTS: {"image": [...]}, {"image": "..."} or a plain list of values
        if isinstance(data, dict):
            try:
                values.extend(enumerate(image_column(data, repr(INPUTS))))
            except ValueError as exc:
                raise RequestError(400, str(exc)) from None
        elif isinstance(data, list):
            values.extend(enumerate(data))
        else:
            raise RequestError(
                400, f"{INPUTS!r} must be an object with {IMAGE_COLUMN!r} or a list, got {_kind(data)}"
            )
    return values, missing


def _params(raw: Any, settings: ServeSettings) -> tuple[str, int]:
    """``mode`` and ``batch_size`` from the request's params (MLflow's ``params``), else the settings'.
    Unknown params are an error rather than ignored: a typo must not silently score in the other mode."""
    if raw is None:
        return settings.mode, settings.batch_size
    if not isinstance(raw, dict):
        raise RequestError(
            400, f'\'params\' must be an object such as {{"mode": "greedy"}}, got {_kind(raw)}'
        )
    unknown = sorted(set(raw) - set(_PARAMS))
    if unknown:
        raise RequestError(400, f"unknown param(s) {unknown}; known: {list(_PARAMS)}")
    mode = raw.get("mode", settings.mode)
    if mode not in _MODES:
        raise RequestError(400, f"params.mode must be one of {list(_MODES)}, got {mode!r}")
    batch_size = raw.get("batch_size", settings.batch_size)
    if not is_int(batch_size) or not 1 <= batch_size <= settings.max_items:
        raise RequestError(
            400,
            f"params.batch_size must be an integer in 1..{settings.max_items} (serve.max_items), got {batch_size!r}",
        )
    return mode, batch_size


def _kind(value: Any) -> str:
    """What a JSON value is, with its article ("an object", "a list", "null"), for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def short(exc: BaseException, n: int = 200) -> str:
    """An exception or message cut to `n` characters: error bodies and log lines never carry a payload."""
    text = str(exc)
    return text if len(text) <= n else text[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------------------
# Rows -> decoded media


def _header_pixels(data: bytes) -> int | None:
    """Width x height from an image's header without decoding it (None if PIL cannot read the header:
    the full decode then says why)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError as exc:  # PIL refuses > 2 x MAX_IMAGE_PIXELS at open: still a size
        m = re.search(r"Image size \((\d+) pixels\)", str(exc))
        return int(m.group(1)) if m else None
    except Exception:
        return None
    return int(w) * int(h)


def decode_rows(values: Sequence[Any], *, n_frames: int, max_pixels: int) -> list[tuple[int, Any, str]]:
    """``[(row, media, kind)]`` for every row, or a :class:`RequestError` that lists every failing row.

    Rows are decoded one after another and the running pixel count is checked before each image is
    decoded (from its header) and after each video, so a batch of decompression bombs stops at the
    budget rather than after filling the memory."""
    decoded: list[tuple[int, Any, str]] = []
    errors: list[dict[str, Any]] = []
    total = 0
    for i, value in enumerate(values):
        try:
            data = decode_base64(value)
            if sniff_video_suffix(data) is None:
                pixels = _header_pixels(data)
                if pixels is not None and total + pixels > max_pixels:
                    raise _pixel_budget(i, total + pixels, max_pixels)
            kind, media = decode_media(data, n_frames=n_frames)
        except MediaError as exc:
            errors.append({"row": i, "error": str(exc)})
            continue
        frames = media if kind == "video" else [media]
        total += sum(f.width * f.height for f in frames)
        if total > max_pixels:
            raise _pixel_budget(i, total, max_pixels)
        decoded.append((i, media, kind))
    if errors:
        rows = ", ".join(str(e["row"]) for e in errors[:10]) + (", ..." if len(errors) > 10 else "")
        raise RequestError(
            400,
            f"{len(errors)} of {len(values)} rows cannot be scored ({'row' if len(errors) == 1 else 'rows'} "
            f"{rows}): each row must be the base64 "
            "bytes of an image or video file; nothing was scored",
            errors=errors,
        )
    return decoded


def _pixel_budget(row: int, pixels: int, limit: int) -> RequestError:
    return RequestError(
        413,
        f"rows 0..{row} decode to {pixels / 1e6:.1f} megapixels, over the limit of {limit / 1e6:g} per request "
        "(serve.max_megapixels; video frames count): send these files in smaller requests",
        errors=[{"row": row, "error": "over the request's decoded-pixel budget"}],
    )
