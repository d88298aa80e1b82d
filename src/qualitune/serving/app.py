"""The FastAPI app (admission, the request pipeline, answers) and running it under uvicorn."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from qualitune.errors import QualituneError
from qualitune.jsonable import json_safe
from qualitune.serving.protocol import (
    RequestError,
    check_content_type,
    decode_rows,
    parse_request,
    read_body,
    short,
)
from qualitune.serving.service import ScoringService
from qualitune.serving.settings import LOOPBACK_HOSTS, ServeSettings

log = logging.getLogger(__name__)


def create_app(service: ScoringService, settings: ServeSettings) -> FastAPI:
    """The FastAPI app: ``/ping`` and ``/health`` (readiness), ``/version``, ``POST /invocations``."""
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
            log.info("invocations: %d %s", err.status, short(err.message))
            return error_response(err)
        except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing to log loudly
            log.info("invocations: the client disconnected before sending the whole body")
            return error_response(RequestError(400, "client disconnected"))
        except Exception as exc:  # a bug or a model failure: answer, log the traceback, keep serving
            log.exception("invocations failed")
            return error_response(RequestError(500, f"scoring failed: {type(exc).__name__}: {short(exc)}"))
        finally:
            app.state.pending -= 1
        log.debug(
            "scored %d rows (%s) in %.3f s", len(predictions), parsed.mode, time.perf_counter() - started
        )
        return JSONResponse(json_safe({"predictions": predictions}))

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
        raise QualituneError(
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
        raise QualituneError(f"could not load {service.ref}: {service.error}")
