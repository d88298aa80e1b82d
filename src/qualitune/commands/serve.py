"""`qualitune serve --model REF [--host H] [--port P] [--params params.yaml] [--device D]`

Serves a scorer over HTTP with MLflow's scoring protocol: POST /invocations with
{"dataframe_records": [{"image": "<base64 file bytes>"}], "params": {"mode": "greedy"}} (params
optional; dataframe_split, instances and inputs work too) returns {"predictions": [...]}, one
object per row with `score`, `score_1_5`, `levels`, `mode`, `media`, `error`. GET /ping answers 200
once the model is loaded and warmed up, 503 before. A bad request (not JSON, no `image`, not base64,
not an image or video, too large) gets a 4xx JSON body naming each bad row; nothing is scored.

REF is a scorer folder, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model. Defaults and
limits come from the `serve` section of params.yaml (if there is one); flags override them. The
server binds 127.0.0.1 unless --host says otherwise and has no authentication. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qualitune.commands import add_model_runtime_arguments, default_device


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a scorer over HTTP (MLflow's /invocations protocol)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="scorer folder, models:/name@alias, models:/name/version or runs:/RUN_ID/model",
    )
    p.add_argument("--host", default=None, help="address to bind (default: serve.host, 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=None, help="port (default: serve.port, 8080; 0: any free port)"
    )
    p.add_argument(
        "--params",
        default=None,
        help="params file with a serve section (default: ./params.yaml if it exists, else built-in defaults)",
    )
    p.add_argument(
        "--max-request-mb", type=float, default=None, help="request body limit (serve.max_request_mb)"
    )
    add_model_runtime_arguments(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.config import load_params
    from qualitune.serving import ScoringService, ServeSettings, bind, serve

    if args.params is not None:
        params = load_params(args.params)
    elif Path("params.yaml").is_file():
        params = load_params("params.yaml")
    else:
        params = {}
    settings = ServeSettings.from_params(
        params, host=args.host, port=args.port, max_request_mb=args.max_request_mb
    )
    service = ScoringService(ref=args.model, device=default_device(args.device), dtype=args.dtype)
    service.resolve()  # a wrong reference fails here, before the port opens
    sock = bind(settings.host, settings.port)
    serve(service, settings, sock=sock, log_level=args.log_level)
    return 0
