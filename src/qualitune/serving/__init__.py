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

from qualitune.serving.app import bind, create_app, serve
from qualitune.serving.protocol import (
    INPUT_KEYS,
    ParsedRequest,
    RequestError,
    check_content_type,
    decode_rows,
    parse_request,
    read_body,
)
from qualitune.serving.service import ScoringService
from qualitune.serving.settings import ServeSettings

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
