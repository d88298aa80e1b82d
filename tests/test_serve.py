"""`qualitune serve`: MLflow's /invocations protocol over a real tiny scorer.

The fast tests drive the FastAPI app in-process (Starlette's TestClient, or raw ASGI calls where the
test must see how much of a body the server reads). The scorer is the untrained tiny Qwen2.5-VL (a
spec-only folder: the base is rebuilt from its seed), which loads in about 2 s; its scores differ
between these images by ~1e-2, far above the 1e-4 the comparisons allow, so a row mix-up fails.

The slow test trains a scorer that separates flat from noisy images, registers it as champion in a
temporary MLflow registry, starts `qualitune serve --model models:/qualitune@champion` as a
subprocess and checks its answers against `qualitune score --json` on the same files.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from media_factory import write_image, write_mp4
from qualitune.serving import (
    RequestError,
    ScoringService,
    ServeSettings,
    create_app,
    decode_rows,
    parse_request,
)
from vlm_factory import flat_or_noisy_scorer, tiny_scorer_dir

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def b64(path: Path | str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid signature and IHDR but no pixel data: all a header check may look at."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    files = [
        write_image(root / "a.png", seed=1),
        write_image(root / "b.jpg", seed=2, size=(80, 56)),
        write_image(root / "c.png", seed=3, size=(48, 64)),
        write_mp4(root / "clip.mp4", n_frames=6, seed=4),
    ]
    return {"root": root, "files": files, "scorer_dir": tiny_scorer_dir(root / "scorer")}


@pytest.fixture(scope="module")
def scorer(world):
    from qualitune.scorer import Scorer

    return Scorer.load(world["scorer_dir"])


@pytest.fixture(scope="module")
def reference(world, scorer):
    """`qualitune score`'s own results on the files (the Scorer.score_paths it runs)."""
    return {
        mode: scorer.score_paths([str(p) for p in world["files"]], mode=mode).results
        for mode in ("expected", "greedy")
    }


SETTINGS = ServeSettings(max_request_mb=1, max_items=8, max_megapixels=1, batch_size=4)


@pytest.fixture(scope="module")
def service(scorer):
    return ScoringService.from_scorer(scorer, ref="tiny")


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service, SETTINGS)) as c:
        yield c


def post(client, body, content_type="application/json"):
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return client.post("/invocations", content=data, headers={"content-type": content_type})


def assert_still_serving(client, world, reference):
    assert client.get("/ping").status_code == 200
    r = post(client, {"dataframe_records": [{"image": b64(world["files"][0])}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["score"] == pytest.approx(reference["expected"][0]["score"], abs=TOL)


# ---------------------------------------------------------------------------------------------------------
# Settings


def test_settings_defaults_match_params_yaml_and_flags_override():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert ServeSettings.from_params(params) == ServeSettings()  # the documented defaults are the code's
    assert ServeSettings.from_params({}) == ServeSettings()
    s = ServeSettings.from_params(params, port=9001, host="0.0.0.0", max_request_mb=None)
    assert (s.port, s.host, s.max_request_mb) == (9001, "0.0.0.0", 32)
    assert s.max_request_bytes == 32 * 1024 * 1024 and s.max_pixels == 100_000_000
    for bad, words in [
        ({"serve": {"max_request_mbs": 3}}, "unknown key"),
        ({"serve": {"max_request_mb": 0}}, "max_request_mb must be a number > 0"),
        ({"serve": {"port": 70000}}, "port must be an integer"),
        ({"serve": {"max_items": 0}}, "max_items must be an integer >= 1"),
        ({"serve": {"mode": "sampled"}}, "mode must be one of"),
        ({"serve": {"host": ""}}, "host"),
    ]:
        with pytest.raises(ValueError, match=words):
            ServeSettings.from_params(bad)


# ---------------------------------------------------------------------------------------------------------
# Good requests


def _payload(fmt: str, values: list[str]) -> dict:
    if fmt == "dataframe_records":
        return {fmt: [{"image": v, "id": i} for i, v in enumerate(values)]}
    if fmt == "dataframe_split":
        return {fmt: {"columns": ["id", "image"], "data": [[i, v] for i, v in enumerate(values)]}}
    if fmt == "instances":
        return {fmt: [{"image": v} for v in values]}
    return {fmt: {"image": values}}


@pytest.mark.parametrize("fmt", ["dataframe_records", "dataframe_split", "instances", "inputs"])
def test_images_and_a_video_score_as_qualitune_score_does(client, world, reference, fmt):
    r = post(client, _payload(fmt, [b64(p) for p in world["files"]]))
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["media"] for p in preds] == ["image", "image", "image", "video"]
    for got, want in zip(preds, reference["expected"], strict=True):
        assert got["error"] is None and got["mode"] == "expected"
        assert got["score"] == pytest.approx(want["score"], abs=TOL)
        assert got["levels"] == pytest.approx(want["levels"], abs=TOL)
        assert got["score_1_5"] == pytest.approx(want["score_1_5"], abs=TOL)
    scores = [p["score"] for p in preds]
    assert max(scores) - min(scores) > 10 * TOL  # the rows are told apart, so a mix-up would show


def test_params_choose_mode_and_batch_size(client, world, reference):
    values = [b64(p) for p in world["files"]]
    r = post(client, {"dataframe_records": [{"image": v} for v in values], "params": {"mode": "greedy"}})
    assert r.status_code == 200, r.text
    for got, want in zip(r.json()["predictions"], reference["greedy"], strict=True):
        assert got["mode"] == "greedy" and got["answer"] == want["answer"] and got["score"] == want["score"]
        assert (got["score"] is None) == (got["error"] is not None)  # an unparsed answer is a 200, named
    one = post(client, {"inputs": values, "params": {"batch_size": 1}}).json()["predictions"]
    assert [p["score"] for p in one] == pytest.approx([w["score"] for w in reference["expected"]], abs=TOL)
    # data URLs and missing padding are accepted, as by the pyfunc
    r = post(client, {"instances": [f"data:image/png;base64,{values[0].rstrip('=')}"]})
    assert r.json()["predictions"][0]["score"] == pytest.approx(reference["expected"][0]["score"], abs=TOL)


def test_ping_health_and_version(client):
    assert client.get("/ping").json() == {"status": "ready", "model": "tiny"}
    assert client.get("/health").status_code == 200
    assert set(client.get("/version").json()) == {"qualitune", "mlflow"}


def test_ping_is_503_until_the_model_is_ready(world):
    service = ScoringService(ref=str(world["scorer_dir"]))
    with TestClient(create_app(service, SETTINGS)) as c:
        r = c.get("/ping")
        assert r.status_code == 503 and r.json()["status"] == "loading" and r.headers["retry-after"] == "1"
        r = post(c, {"inputs": ["aGVsbG8="]})
        assert r.status_code == 503 and "still loading" in r.json()["message"]
        service.load()  # what the server's loader thread does: weights, then a warm-up image
        assert c.get("/ping").status_code == 200
        assert post(c, {"inputs": [b64(world["files"][0])]}).status_code == 200


# ---------------------------------------------------------------------------------------------------------
# Bad requests: a 4xx that says why (and which rows), and the server goes on serving


def _garbage() -> str:
    return base64.b64encode(np.random.default_rng(0).bytes(300)).decode()


BAD = [
    pytest.param(b"this is not json", 400, ["not valid JSON"], None, id="not-json"),
    pytest.param(b"\xff\xfe\x00junk", 400, ["not valid JSON"], None, id="not-utf8"),
    pytest.param(b"", 400, ["empty request body"], None, id="empty-body"),
    pytest.param([{"image": "x"}], 400, ["must be a JSON object", "got a list"], None, id="json-list"),
    pytest.param({"images": []}, 400, ["unknown key(s) ['images']"], None, id="unknown-key"),
    pytest.param({"params": {}}, 400, ["exactly one of"], None, id="no-input-key"),
    pytest.param({"inputs": [], "instances": []}, 400, ["exactly one of"], None, id="two-input-keys"),
    pytest.param({"dataframe_records": []}, 400, ["no rows"], None, id="no-rows"),
    pytest.param(
        {"dataframe_records": {"image": "x"}}, 400, ["must be a list of rows"], None, id="records-not-list"
    ),
    pytest.param(
        {"dataframe_records": [{"img": "x"}, {"img": "y"}]},
        400,
        ["no row has an 'image' value", "fields: ['img']"],
        [0, 1],
        id="no-image-column",
    ),
    pytest.param(
        {"dataframe_split": {"columns": ["img"], "data": [["x"]]}},
        400,
        ["no 'image' column"],
        None,
        id="split-no-image",
    ),
    pytest.param(
        {"dataframe_split": {"columns": ["image"], "data": [["x"], "y"]}},
        400,
        ["1 of 2 rows have no 'image'"],
        [1],
        id="split-bad-row",
    ),
    pytest.param({"inputs": {"img": ["x"]}}, 400, ["no 'image' key"], None, id="inputs-no-image"),
    pytest.param({"inputs": ["not base64 !!"]}, 400, ["not valid base64"], [0], id="not-base64"),
    pytest.param({"inputs": [""]}, 400, ["empty image string"], [0], id="empty-string"),
    pytest.param({"inputs": [None]}, 400, ["no image given"], [0], id="null"),
    pytest.param({"inputs": [12]}, 400, ["expected a base64-encoded file as a string"], [0], id="number"),
    pytest.param({"inputs": [_garbage()]}, 400, ["cannot decode"], [0], id="not-an-image"),
    pytest.param(
        {"inputs": [base64.b64encode(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64).decode()]},
        400,
        ["mp4 video"],
        [0],
        id="broken-video",
    ),
    pytest.param(
        {"inputs": ["x"], "params": {"mdoe": "greedy"}},
        400,
        ["unknown param(s) ['mdoe']"],
        None,
        id="param-typo",
    ),
    pytest.param(
        {"inputs": ["x"], "params": {"mode": "beam"}},
        400,
        ["params.mode must be one of"],
        None,
        id="bad-mode",
    ),
    pytest.param(
        {"inputs": ["x"], "params": {"batch_size": 0}}, 400, ["params.batch_size must be"], None, id="batch-0"
    ),
    pytest.param({"inputs": ["x"], "params": {"batch_size": 9}}, 400, ["1..8"], None, id="batch-over-max"),
    pytest.param(
        {"inputs": ["x"], "params": [1]}, 400, ["'params' must be an object"], None, id="params-list"
    ),
    pytest.param(
        {"inputs": ["aGk="] * 9}, 413, ["9 rows", "limit is 8", "serve.max_items"], None, id="too-many-rows"
    ),
]


@pytest.mark.parametrize(("body", "status", "words", "rows"), BAD)
def test_bad_payloads_get_a_4xx_naming_the_problem(client, world, reference, body, status, words, rows):
    r = post(client, body)
    assert r.status_code == status, r.text
    out = r.json()
    assert set(out) <= {"error_code", "message", "errors"} and out["error_code"]
    text = out["message"] + json.dumps(out.get("errors"))
    for w in words:
        assert w in text, text
    if rows is not None:
        assert [e["row"] for e in out["errors"]] == rows and all(e["error"] for e in out["errors"])
    assert len(r.content) < 2000  # the body is never echoed back
    assert_still_serving(client, world, reference)


def test_one_bad_row_names_every_bad_row_and_scores_nothing(client, service, world, reference, monkeypatch):
    calls = []
    monkeypatch.setattr(service, "score", lambda *a, **k: calls.append(1))  # must not be reached
    good = b64(world["files"][0])
    server_path = str(world["files"][1])  # a path on the server is not base64 file bytes: never opened
    rows = [
        good,
        "not base64 !!",
        good,
        _garbage(),
        server_path,
        base64.b64encode(server_path.encode()).decode(),
    ]
    r = post(client, {"dataframe_records": [{"image": v} for v in rows]})
    assert r.status_code == 400, r.text
    out = r.json()
    assert [e["row"] for e in out["errors"]] == [1, 3, 4, 5]
    assert (
        "4 of 6 rows cannot be scored (rows 1, 3, 4, 5)" in out["message"]
        and "nothing was scored" in out["message"]
    )
    assert "base64" in out["errors"][0]["error"] and "cannot decode" in out["errors"][1]["error"]
    assert "the data" in out["errors"][1]["error"] and "BytesIO" not in out["errors"][1]["error"]
    assert calls == []
    monkeypatch.undo()
    assert_still_serving(client, world, reference)


def test_unsupported_content_type_is_415(client, world, reference):
    body = json.dumps({"inputs": [b64(world["files"][0])]}).encode()
    for ctype in ("text/csv", "application/x-www-form-urlencoded", "application/json; charset=latin-1"):
        r = post(client, body, ctype)
        assert r.status_code == 415, ctype
        assert "application/json" in r.json()["message"] or "UTF-8" in r.json()["message"]
    assert post(client, body, "application/json; charset=utf-8").status_code == 200
    assert_still_serving(client, world, reference)


def test_decoded_pixels_are_capped_before_decoding(world, monkeypatch):
    """A PNG of 4000x4000 flat pixels is ~50 kB on the wire but 48 MB decoded: refused from its header."""
    import qualitune.serving.protocol as protocol

    bomb = png_bytes(np.zeros((4000, 4000, 3), np.uint8))
    assert len(bomb) < 200_000
    small = Path(world["files"][0]).read_bytes()  # 64x48
    decoded = []
    real = protocol.decode_media
    monkeypatch.setattr(
        protocol, "decode_media", lambda data, **k: decoded.append(len(data)) or real(data, **k)
    )
    values = [base64.b64encode(x).decode() for x in (small, bomb)]
    with pytest.raises(RequestError) as err:
        decode_rows(values, n_frames=2, max_pixels=1_000_000)
    assert err.value.status == 413 and "rows 0..1 decode to 16.0 megapixels" in err.value.message
    assert err.value.errors == [{"row": 1, "error": "over the request's decoded-pixel budget"}]
    assert decoded == [len(small)]  # the bomb was never decoded
    # a header that claims 20000x20000 (past PIL's own bomb limit): refused as 400 megapixels, unread
    with pytest.raises(RequestError, match="rows 0..0 decode to 400.0 megapixels"):
        decode_rows([base64.b64encode(png_header(20000, 20000)).decode()], n_frames=2, max_pixels=10**8)
    assert decoded == [len(small)]
    # video frames count too: 2 sampled frames of 64x48
    clip = b64(world["files"][3])
    with pytest.raises(RequestError, match="rows 0..0 decode to 0.0"):
        decode_rows([clip], n_frames=2, max_pixels=64 * 48 * 2 - 1)
    assert [k for _, _, k in decode_rows([clip], n_frames=2, max_pixels=64 * 48 * 2)] == ["video"]


def test_parse_request_never_echoes_a_large_body():
    huge = "A" * 500_000 + "!"
    with pytest.raises(RequestError) as err:
        parse_request(json.dumps({"inputs": [huge], "extra": huge}).encode(), SETTINGS)
    assert len(err.value.message) < 500


def test_busy_server_answers_503_with_retry_after(service, world, reference):
    app = create_app(service, SETTINGS)
    with TestClient(app) as c:
        app.state.pending = SETTINGS.max_pending
        r = post(c, {"inputs": [b64(world["files"][0])]})
        assert (
            r.status_code == 503 and r.headers["retry-after"] == "1" and "max_pending" in r.json()["message"]
        )
        assert c.get("/ping").status_code == 200  # readiness is not load
        app.state.pending = 0
        assert post(c, {"inputs": [b64(world["files"][0])]}).status_code == 200


def test_a_scoring_failure_is_a_500_and_the_server_goes_on(client, service, world, reference, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(service.scorer, "score_into", boom)
    r = post(client, {"inputs": [b64(world["files"][0])]})
    assert r.status_code == 500 and "RuntimeError: CUDA out of memory (simulated)" in r.json()["message"]
    monkeypatch.undo()
    assert_still_serving(client, world, reference)


# ---------------------------------------------------------------------------------------------------------
# Oversized bodies: refused without being read


def _asgi_post(app, headers: list[tuple[bytes, bytes]], chunks, *, max_chunks: int = 10_000):
    """POST /invocations straight through ASGI; `chunks` is an iterator of body chunks (more_body until it
    ends). Returns (status, headers, json body, number of body chunks the app pulled)."""
    pulled = 0
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        if pulled >= max_chunks:
            raise AssertionError("the server kept reading an oversized body")
        chunk = next(chunks, None)
        pulled += 1
        if chunk == "disconnect":
            return {"type": "http.disconnect"}
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body), pulled


def _endless(chunk_size: int = 64 * 1024):
    while True:
        yield b"x" * chunk_size


def test_oversized_content_length_is_refused_before_reading(service):
    app = create_app(service, SETTINGS)  # 1 MB
    status, headers, body, pulled = _asgi_post(app, [(b"content-length", str(10**12).encode())], _endless())
    assert status == 413 and pulled == 0
    assert headers[b"connection"] == b"close"
    assert "the request body is 953674.3 MB" in body["message"] and "limit is 1 MB" in body["message"]
    status, _, body, _ = _asgi_post(app, [(b"content-length", b"12abc")], iter([b"{}"]))
    assert status == 400 and "Content-Length is not a number" in body["message"]


def test_streamed_body_is_cut_at_the_limit(service):
    app = create_app(service, SETTINGS)  # 1 MB = 16 chunks of 64 kB
    status, _, body, pulled = _asgi_post(app, [], _endless(), max_chunks=100)
    assert status == 413 and "passed 1 MB" in body["message"]
    assert pulled == 17  # 16 chunks reach the limit exactly; the 17th passes it and reading stops
    # a body that lies about its length is cut just the same
    status, _, _, pulled = _asgi_post(app, [(b"content-length", b"100")], _endless(), max_chunks=100)
    assert status == 413 and pulled == 17


def test_a_client_that_hangs_up_mid_upload_is_logged_not_a_500(service, caplog):
    app = create_app(service, SETTINGS)
    with caplog.at_level("INFO", logger="qualitune.serving"):
        status, _, body, _ = _asgi_post(app, [], iter([b'{"inputs": ["', "disconnect"]))
    assert status == 400 and body["message"] == "client disconnected"
    assert "disconnected before sending the whole body" in caplog.text and "Traceback" not in caplog.text
    assert app.state.pending == 0


# ---------------------------------------------------------------------------------------------------------
# The command


def test_serve_is_a_command_and_checks_the_reference_before_opening_a_port(tmp_path, capsys, monkeypatch):
    from qualitune.cli import build_parser, main

    monkeypatch.chdir(tmp_path)  # no params.yaml: built-in defaults
    assert "serve" in build_parser().format_help()
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "qualitune serve: error: model" in err and "runs:/RUN_ID/model" in err
    assert main(["serve", "--model", "runs:/abc"]) == 2
    assert "runs:/RUN_ID/model" in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"serve": {"max_request_mb": -1}}))
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "max_request_mb must be a number > 0" in capsys.readouterr().err


def test_port_in_use_is_a_clear_error(world, tmp_path, capsys, monkeypatch):
    import socket

    from qualitune.cli import main

    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", "--model", str(world["scorer_dir"]), "--port", str(port)])
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_a_model_that_fails_to_load_stops_the_server(tmp_path, capsys, monkeypatch):
    """The port opens first (/ping 503 while loading); a load failure ends the command with the reason.
    Here the scorer asks for trust_remote_code, which qualitune never enables."""
    from qualitune.cli import main

    monkeypatch.chdir(tmp_path)
    bad = tiny_scorer_dir(tmp_path / "remote", trust_remote_code=True)
    started = time.monotonic()
    assert main(["serve", "--model", str(bad), "--port", "0"]) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert "could not load" in err and "trust_remote_code" in err


# ---------------------------------------------------------------------------------------------------------
# The real thing: a subprocess serving the registry's champion


def _train_flat_vs_noisy(root: Path) -> tuple[Path, list[dict], list[dict]]:
    """A scorer that tells flat (MOS 5) from noisy (MOS 1) images, as in test_registry."""

    from vlm_factory import write_flat_or_noisy

    (root / "media").mkdir(parents=True)
    rng = np.random.default_rng(0)

    def row(kind: str, i: int, split: str) -> dict:
        path = write_flat_or_noisy(root / "media" / f"{kind}{i}.png", kind, rng)
        mos = 5.0 if kind == "flat" else 1.0
        return {"item_id": f"{kind}{i}", "path": path, "media": "image", "mos_norm": mos, "split": split}

    train_rows = [row(k, i, "train") for i in range(8) for k in ("flat", "noisy")]
    val_rows = [row(k, 100 + i, "val") for i in range(3) for k in ("flat", "noisy")]
    return flat_or_noisy_scorer(train_rows, root / "scorer"), train_rows, val_rows


@pytest.fixture(scope="module")
def registry_project(tmp_path_factory):
    """A project folder whose params.yaml points at a fresh sqlite registry holding the trained scorer as
    models:/qualitune@champion (through the register stage's own code)."""
    import pandas as pd

    from qualitune.gate import RegisterSettings, log_and_register
    from qualitune.tracking import tracking_settings

    root = tmp_path_factory.mktemp("serve-registry")
    scorer_dir, _, val_rows = _train_flat_vs_noisy(root)
    project = root / "project"
    project.mkdir()
    params = {
        "mlflow": {
            "tracking_uri": "sqlite:///mlflow.db",
            "experiment": "qualitune",
            "enabled": True,
            "artifact_location": str(root / "artifacts"),
            "model_name": "qualitune",
        },
        "serve": {"max_request_mb": 2, "max_items": 16},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(project)
    try:
        tracking = tracking_settings(params)
        decision = log_and_register(
            scorer_dir,
            RegisterSettings(min_final=-1.0, batch_size=4, report=str(root / "register.json")),
            tracking,
            val_df=pd.DataFrame(val_rows),
        )
    finally:
        os.chdir(cwd)
    assert decision.promoted, decision.reason
    return {"root": root, "project": project, "run_id": decision.run_id, "scorer_dir": scorer_dir}


def _http(url: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _score_cli(project: Path, env: dict, files: list[str], mode: str) -> list[dict]:
    res = subprocess.run(
        [sys.executable, "-m", "qualitune.cli", "score", "--model", "models:/qualitune@champion", "--json"]
        + ["--mode", mode, *files],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode in (0, 1), res.stderr  # 1: some greedy answer did not parse (a model outcome)
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.mark.slow
def test_served_champion_matches_qualitune_score(registry_project, tmp_path, monkeypatch):
    import http.client

    from qualitune.scorer import ScorerSpec, resolve_model_ref

    project = registry_project["project"]
    rng = np.random.default_rng(7)
    from vlm_factory import write_flat_or_noisy

    files = [
        write_flat_or_noisy(tmp_path / f"{k}{i}.png", k, rng) for i in range(2) for k in ("flat", "noisy")
    ]
    files.append(str(write_image(tmp_path / "photo.jpg", seed=5, size=(96, 72))))
    files.append(str(write_mp4(tmp_path / "clip.mp4", n_frames=8, seed=6)))
    env = {**os.environ, "QUALITUNE_MODEL_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's params.yaml names the registry

    log_file = tmp_path / "serve.log"
    with open(log_file, "wb") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qualitune.cli", "serve", "--model", "models:/qualitune@champion"]
            + ["--host", "127.0.0.1", "--port", "0"],
            cwd=project,
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
        )
    try:
        port = None
        seen = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_file.read_text()
            if port is None:
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_file.read_text())
                port = int(m.group(1)) if m else None
            else:
                try:
                    status, body = _http(f"http://127.0.0.1:{port}/ping", timeout=5)
                except (urllib.error.URLError, ConnectionError):
                    status, body = None, None
                seen.append(status)
                if status == 200:
                    break
                assert status in (None, 503), (status, body)
            time.sleep(0.2)
        assert seen and seen[-1] == 200, log_file.read_text()
        base = f"http://127.0.0.1:{port}"

        values = [b64(f) for f in files]
        for mode in ("expected", "greedy"):
            payload = {"dataframe_records": [{"image": v} for v in values], "params": {"mode": mode}}
            status, out = _http(f"{base}/invocations", json.dumps(payload).encode())
            assert status == 200, out
            preds = out["predictions"]
            want = _score_cli(project, env, files, mode)
            assert [p["media"] for p in preds] == ["image"] * 5 + ["video"]
            for got, ref in zip(preds, want, strict=True):
                if ref["score"] is None:
                    assert got["score"] is None and got["error"] == ref["error"]
                else:
                    assert got["score"] == pytest.approx(ref["score"], abs=TOL), (got, ref)
                    assert got["levels"] == pytest.approx(ref["levels"], abs=TOL)
            if mode == "expected":
                flat = [p["score"] for p in preds[:4:2]]
                noisy = [p["score"] for p in preds[1:4:2]]
                assert min(flat) > max(noisy) + 5, (flat, noisy)  # a trained champion, not a constant

        # a bad row: 400 naming it, and the server still answers
        bad = {"dataframe_records": [{"image": values[0]}, {"image": "not base64 !!"}]}
        status, out = _http(f"{base}/invocations", json.dumps(bad).encode())
        assert status == 400 and out["errors"][0]["row"] == 1 and "base64" in out["errors"][0]["error"]
        # an oversized body: a 1 GB Content-Length is refused at once, without the body being sent
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.putrequest("POST", "/invocations")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(1 << 30))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413 and "limit is 2 MB" in json.loads(resp.read())["message"]
        conn.close()
        # and a real oversized body (3 MB) sent in full is refused too
        big = json.dumps({"inputs": ["A" * (3 << 20)]}).encode()
        try:
            status, out = _http(f"{base}/invocations", big, timeout=60)
            assert status == 413, out
        except (ConnectionError, urllib.error.URLError):
            pass  # the server may close before the client has written the whole body: also a refusal
        status, out = _http(f"{base}/invocations", json.dumps({"inputs": values[:1]}).encode())
        assert status == 200 and out["predictions"][0]["score"] is not None
        assert _http(f"{base}/ping")[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_file.read_text()
    log_text = log_file.read_text()
    assert "Traceback" not in log_text, log_text

    # runs:/RUN_ID/model resolves to the same scorer as the champion it registered
    monkeypatch.chdir(project)
    monkeypatch.setenv("QUALITUNE_MODEL_CACHE", str(tmp_path / "cache2"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = resolve_model_ref(f"runs:/{registry_project['run_id']}/model")
    assert run_dir.is_relative_to(tmp_path / "cache2")
    assert resolve_model_ref(f"runs:/{registry_project['run_id']}/model") == run_dir  # cached
    with pytest.raises(ValueError, match="cannot download runs:/0123abc/model"):
        resolve_model_ref("runs:/0123abc/model")
    assert ScorerSpec.read(run_dir) == ScorerSpec.read(registry_project["scorer_dir"])
    assert (run_dir / "weights.safetensors").read_bytes() == (
        registry_project["scorer_dir"] / "weights.safetensors"
    ).read_bytes()
