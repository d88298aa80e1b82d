"""An HTTP scoring server for a trained scorer: MLflow's ``/invocations`` protocol, with limits.

``qualitune serve --model models:/qualitune@champion`` (or a scorer folder, ``models:/name/3``,
``runs:/RUN_ID/model``) answers the requests ``mlflow models serve`` answers, in the same format::

    POST /invocations   {"dataframe_records": [{"image": "<base64 file bytes>"}, ...],
                         "params": {"mode": "greedy", "batch_size": 8}}            (params optional)
    ->  200 {"predictions": [{"score": 37.2, "score_1_5": 3.72, "levels": [...], "mode": "expected",
                              "media": "image", "error": null, "invalid_mass": 0.01}, ...]}
    GET /ping, /health  ->  200 once the model is loaded and has scored a warm-up image, 503 before

``dataframe_split``, ``instances`` and ``inputs`` work as in MLflow; each row is a whole image or video
file (MP4/MOV, Matroska/WebM, AVI, FLV, MPEG), base64-encoded. Inputs are bytes only: a string that
happens to be a server-side path is just invalid base64 or an undecodable file, never opened.

Why not ``mlflow models serve --env-manager local`` as is (it serves the registered pyfunc and works
for well-formed requests)? Its server reads the whole request body into memory whatever its size,
answers 200 with ``score: null`` for a row that is not an image (the pyfunc's batch semantics), and
its error messages echo the request body back (a 30 MB payload comes back in the error). A scoring
endpoint needs a bounded body, a 4xx that names each bad row, and an error body of a few hundred
bytes. So this module keeps MLflow's wire format and response shape and adds, in order:

1. admission: at most ``serve.max_pending`` requests in flight (503 + Retry-After beyond that), so
   queued bodies and decoded pixels cannot grow without bound;
2. the body: Content-Length above ``serve.max_request_mb`` is refused before a byte is read, and a
   streamed body is read in chunks and dropped as soon as it passes the limit (413, connection closed);
3. the request: JSON, exactly one of MLflow's input keys, an ``image`` value in every row, at most
   ``serve.max_items`` rows, known ``params`` (400/413 with the reason);
4. the rows: every row is decoded (base64, then image or video) before anything is scored, and the
   decoded pixels of a request are capped at ``serve.max_megapixels`` (checked from image headers
   before decoding). If any row fails, nothing is scored and the 400 lists every failing row and why,
   so a client can drop or fix exactly those rows;
5. scoring: one request at a time on the model (a lock; decoding of the next request overlaps), in a
   worker thread so that ``/ping`` keeps answering while a batch runs.

A row the model scores but whose answer does not parse (greedy mode) is a model outcome, not a bad
request: it comes back in a 200 with ``score: null`` and ``error``, exactly as ``qualitune score``
reports it. Error bodies are ``{"error_code": ..., "message": ..., "errors": [{"row": i, "error":
...}]}`` (MLflow's error shape, plus the per-row list).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from qualitune.media import MediaError

if TYPE_CHECKING:
    from qualitune.scorer import Scorer

log = logging.getLogger(__name__)

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
_MODES = ("expected", "greedy")
_PARAMS = ("mode", "batch_size")
_MB = 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

# MLflow's request keys (mlflow.pyfunc.scoring_server): exactly one per request, plus optional params.
DF_RECORDS, DF_SPLIT, INSTANCES, INPUTS = "dataframe_records", "dataframe_split", "instances", "inputs"
INPUT_KEYS = (DF_RECORDS, DF_SPLIT, INSTANCES, INPUTS)
IMAGE_COLUMN = "image"
_EXAMPLE = '{"dataframe_records": [{"image": "<base64 of the file>"}]}'


# ---------------------------------------------------------------------------------------------------------
# Settings


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
            raise ValueError(f"{SECTION}.host must be a host name or address, got {self.host!r}")
        if not _is_int(self.port) or not 0 <= self.port <= 65535:
            raise ValueError(
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
                raise ValueError(f"{SECTION}.{key} must be a number > 0, got {value!r}")
        for key in ("max_items", "max_pending", "batch_size"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{SECTION}.{key} must be an integer >= 1, got {value!r}")
        if self.mode not in _MODES:
            raise ValueError(f"{SECTION}.mode must be one of {list(_MODES)}, got {self.mode!r}")

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * _MB)

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
            raise ValueError(f"unknown serve setting(s) {unknown}; known: {list(_KNOWN_KEYS)}")
        return cls(**{k: v for k, v in raw.items() if v is not None})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------
# Requests


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
            raise _too_large(f"the request body is {declared / _MB:.1f} MB", limit)
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limit:
            raise _too_large(f"the request body passed {limit / _MB:g} MB", limit)
    return bytes(buf)


def _too_large(what: str, limit: int) -> RequestError:
    return RequestError(
        413,
        f"{what}; the limit is {limit / _MB:g} MB (serve.max_request_mb). Send fewer or smaller files per "
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
            400, f"the request body is not valid JSON ({_short(exc)}); send {_EXAMPLE}"
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
            if IMAGE_COLUMN not in data:
                raise RequestError(400, f"{INPUTS!r} has no {IMAGE_COLUMN!r} key; keys: {sorted(data)[:20]}")
            col = data[IMAGE_COLUMN]
            values.extend(enumerate(col if isinstance(col, list) else [col]))
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
    if not _is_int(batch_size) or not 1 <= batch_size <= settings.max_items:
        raise RequestError(
            400,
            f"params.batch_size must be an integer in 1..{settings.max_items} (serve.max_items), got {batch_size!r}",
        )
    return mode, batch_size


def _kind(value: Any) -> str:
    """What a JSON value is, with its article ("an object", "a list", "null"), for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _short(exc: BaseException, n: int = 200) -> str:
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
    from qualitune.registry import decode_base64, decode_media, sniff_video_suffix

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


# ---------------------------------------------------------------------------------------------------------
# The model


@dataclass
class ScoringService:
    """One loaded scorer behind a lock. ``ready`` turns true only after a warm-up image has been scored,
    so ``/ping`` means "a request now gets scores", not merely "the process is up"."""

    ref: str
    device: str | None = None
    dtype: str | None = None  # None: the scorer's own (fp32 for the compact backend)
    scorer: Scorer | None = None
    source: str | None = None  # the scorer folder the reference resolved to
    error: str | None = None  # why loading failed (the server then stops)
    ready: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_scorer(
        cls, scorer: Scorer, ref: str = "<in-process>", *, warm_up: bool = True
    ) -> ScoringService:
        """A service around an already loaded scorer (tests, notebooks)."""
        service = cls(ref=ref, scorer=scorer)
        if warm_up:
            service.warm_up()
        service.ready = True
        return service

    def resolve(self) -> Path:
        """The local scorer folder of ``ref`` (downloads ``models:/`` and ``runs:/`` references): done
        before the port opens, so a wrong reference fails the command at once with the reason."""
        from qualitune.scorer import resolve_model_ref

        self.source = str(resolve_model_ref(self.ref))
        return Path(self.source)

    def load(self) -> None:
        """Load the weights (safetensors, ``trust_remote_code`` off) and score a warm-up image."""
        from qualitune.scorer import Scorer

        started = time.perf_counter()
        folder = Path(self.source) if self.source else self.resolve()
        self.scorer = Scorer.load(folder, device=self.device, dtype=self.dtype)
        self.warm_up()
        self.ready = True
        log.info(
            "model %s (%s) loaded and warmed up in %.1f s", self.ref, folder, time.perf_counter() - started
        )

    def warm_up(self) -> None:
        """Score one small grey image: the first forward pass allocates and compiles what it needs, and a
        model that cannot score fails here instead of on a client's request."""
        from PIL import Image

        if self.scorer is None:
            raise RuntimeError("no scorer loaded")
        img = Image.new("RGB", (64, 64), (128, 128, 128))
        with self._lock:
            self.scorer.score_items([img], ["image"], mode="expected")

    @property
    def n_frames(self) -> int:
        assert self.scorer is not None
        return int(self.scorer.spec.n_frames)

    def score(
        self, decoded: Sequence[tuple[int, Any, str]], n_rows: int, *, mode: str, batch_size: int
    ) -> list[dict[str, Any]]:
        """One prediction per row (the pyfunc's fields: score, score_1_5, levels, mode, media, error, and
        answer or invalid_mass), scored in batches of ``batch_size``, one request at a time."""
        from qualitune.vlm.answers import ParseReport

        if self.scorer is None:
            raise RuntimeError("no scorer loaded")
        results: list[dict[str, Any]] = [
            {"score": None, "score_1_5": None, "levels": None, "mode": mode, "media": None, "error": None}
            for _ in range(n_rows)
        ]
        for i, _, kind in decoded:
            results[i]["media"] = kind
        with self._lock:
            self.scorer.score_into(
                results, list(decoded), mode=mode, batch_size=batch_size, report=ParseReport()
            )
        return results


# ---------------------------------------------------------------------------------------------------------
# The app


def create_app(service: ScoringService, settings: ServeSettings) -> FastAPI:
    """The FastAPI app: ``/ping`` and ``/health`` (readiness), ``/version``, ``POST /invocations``."""
    from qualitune.registry import _json_safe

    app = FastAPI(title="qualitune scorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.settings = settings
    app.state.pending = 0

    def error_response(err: RequestError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    async def ping() -> JSONResponse:
        if service.ready:
            return JSONResponse({"status": "ready", "model": service.ref})
        if service.error:
            return JSONResponse(
                {"status": "failed", "model": service.ref, "error": service.error}, status_code=503
            )
        return JSONResponse(
            {"status": "loading", "model": service.ref}, status_code=503, headers={"Retry-After": "1"}
        )

    app.get("/ping")(ping)
    app.get("/health")(ping)

    @app.get("/version")
    async def version() -> JSONResponse:
        from importlib.metadata import version as pkg_version

        return JSONResponse({"qualitune": pkg_version("qualitune"), "mlflow": pkg_version("mlflow")})

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        if not service.ready:
            return error_response(
                RequestError(
                    503,
                    "the model is still loading; poll GET /ping until it answers 200",
                    headers={"Retry-After": "1"},
                )
            )
        if app.state.pending >= settings.max_pending:
            return error_response(
                RequestError(
                    503,
                    f"{settings.max_pending} requests are already being served (serve.max_pending); retry shortly",
                    headers={"Retry-After": "1"},
                )
            )
        app.state.pending += 1
        started = time.perf_counter()
        try:
            check_content_type(request.headers.get("content-type"))
            body = await read_body(
                request.stream(), request.headers.get("content-length"), settings.max_request_bytes
            )
            parsed = parse_request(body, settings)
            del body
            decoded = await asyncio.to_thread(
                decode_rows, parsed.values, n_frames=service.n_frames, max_pixels=settings.max_pixels
            )
            predictions = await asyncio.to_thread(
                service.score, decoded, len(parsed.values), mode=parsed.mode, batch_size=parsed.batch_size
            )
        except RequestError as err:
            log.info("invocations: %d %s", err.status, _short(err.message))
            return error_response(err)
        except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing to log loudly
            log.info("invocations: the client disconnected before sending the whole body")
            return error_response(RequestError(400, "client disconnected"))
        except Exception as exc:  # a bug or a model failure: answer, log the traceback, keep serving
            log.exception("invocations failed")
            return error_response(RequestError(500, f"scoring failed: {type(exc).__name__}: {_short(exc)}"))
        finally:
            app.state.pending -= 1
        log.debug(
            "scored %d rows (%s) in %.3f s", len(predictions), parsed.mode, time.perf_counter() - started
        )
        return JSONResponse(_json_safe({"predictions": predictions}))

    return app


# ---------------------------------------------------------------------------------------------------------
# Running it


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, opened before the model loads so that a port already in use is reported at
    once (and port 0 picks a free one that the caller can print)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    service: ScoringService,
    settings: ServeSettings,
    *,
    sock: socket.socket | None = None,
    log_level: str = "info",
) -> None:
    """Serve until SIGINT/SIGTERM. The model loads in a background thread while the port already answers
    ``/ping`` with 503; if loading fails the server stops and this raises ``ValueError`` with the reason."""
    import uvicorn

    sock = sock or bind(settings.host, settings.port)
    app = create_app(service, settings)
    config = uvicorn.Config(
        app, log_config=None, log_level=log_level, access_log=True, timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)

    def load() -> None:
        try:
            service.load()
        except Exception as exc:
            log.exception("loading %s failed", service.ref)
            service.error = f"{type(exc).__name__}: {exc}"
            server.should_exit = True

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    log.info("listening on http://%s:%d (POST /invocations, GET /ping); loading %s", shown, port, service.ref)
    if settings.host not in LOOPBACK_HOSTS:
        log.warning(
            "listening on %s, not loopback: the server has no authentication; expose it only behind a proxy "
            "or network you trust",
            settings.host,
        )
    loader = threading.Thread(target=load, name="qualitune-model-loader", daemon=True)
    loader.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled once it has shut down cleanly
        log.info("stopped")
    finally:
        sock.close()
    if service.error:
        raise ValueError(f"could not load {service.ref}: {service.error}")


__all__ = [
    "INPUT_KEYS",
    "ParsedRequest",
    "RequestError",
    "ScoringService",
    "ServeSettings",
    "bind",
    "check_content_type",
    "create_app",
    "decode_rows",
    "parse_request",
    "read_body",
    "serve",
]
