"""Load test of `qualitune serve`: requests/s, images/s, p50/p95 latency and errors.

Starts `qualitune serve --model MODEL --host 127.0.0.1 --port 0` as a subprocess (or, with `--url`,
uses a server that is already running), waits for GET /ping to answer 200, sends one untimed warm-up
request, then `--requests` POST /invocations of `--batch` images each from `--concurrency` threads.
Each thread keeps one HTTP/1.1 connection, as a client pool would. The number of requests and of
threads is fixed, so the load is bounded; a request that is not a 200 with a score for every image
counts as an error (with its status), never as a fast success: requests/s, images/s and the latency
percentiles count good answers only. Nothing is retried, so a concurrency above the server's
`serve.max_pending` shows up as 503 errors (the server shedding load) rather than as queueing.

The images are seeded synthetic JPEGs of `--size` pixels (a textured gradient plus noise; the scorer
resizes to its own pixel budget, so the content barely changes the cost), or the files under
`--images`, cycled. Latency is per request, from sending the body to having read the whole answer,
so it includes queueing behind the other threads' requests (the server scores one batch at a time).
With a server it started itself, the script also reports the server's peak resident memory.

    python benchmarks/serve_load.py --model models/scorer [--requests 40] [--concurrency 2] [--batch 4]
        [--size 224] [--mode expected|greedy] [--images DIR]
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --requests 100 --concurrency 4

Prints a summary, then one line of JSON (the last line).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

MEDIA_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def synthetic_jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    """`n` seeded JPEGs (gradient + noise, quality 90) of `size` x `size` pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) / size * 255
        arr = np.clip(base + rng.normal(0, rng.uniform(2, 40), base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def image_files(folder: str) -> list[bytes]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in MEDIA_EXTS)
    if not files:
        raise SystemExit(f"no images ({sorted(MEDIA_EXTS)}) under {folder}")
    return [p.read_bytes() for p in files]


def get(host: str, port: int, path: str, timeout: float = 5.0) -> int | None:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def start_server(
    model: str, log_path: Path, timeout: float, extra: list[str] | None = None
) -> tuple[subprocess.Popen, int]:
    """`qualitune serve` on a free loopback port (plus `extra` flags); returns once /ping answers 200."""
    log_fh = open(log_path, "wb")  # kept open for the server's lifetime
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qualitune.cli",
            "serve",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *(extra or []),
        ],
        stdout=log_fh,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if port is None:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
            port = int(m.group(1)) if m else None
        elif get("127.0.0.1", port, "/ping") == 200:
            return proc, port
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"the server was not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def make_bodies(images: list[bytes], n_requests: int, batch: int, mode: str) -> list[bytes]:
    """Request bodies, built before the clock starts (client-side encoding is not the server's cost)."""
    encoded = [base64.b64encode(b).decode("ascii") for b in images]
    bodies = []
    for r in range(n_requests + 1):  # +1: the warm-up
        rows = [{"image": encoded[(r * batch + i) % len(encoded)]} for i in range(batch)]
        bodies.append(json.dumps({"dataframe_records": rows, "params": {"mode": mode}}).encode())
    return bodies


def post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def check(status: int, payload: bytes, batch: int) -> str | None:
    """None for a good answer, else a short reason."""
    if status != 200:
        return f"HTTP {status}"
    try:
        preds = json.loads(payload)["predictions"]
    except (ValueError, KeyError):
        return "bad JSON"
    if len(preds) != batch:
        return f"{len(preds)} predictions for {batch} images"
    if any(p.get("score") is None for p in preds):
        return "score null"
    return None


def run_load(host: str, port: int, bodies: list[bytes], batch: int, concurrency: int, timeout: float) -> dict:
    warm = http.client.HTTPConnection(host, port, timeout=timeout)
    status, payload = post(warm, bodies[0])
    warm.close()
    if (why := check(status, payload, batch)) is not None:  # e.g. greedy answers that do not parse
        raise SystemExit(f"the warm-up request failed ({why}): {payload[:500]!r}")

    todo = list(range(1, len(bodies)))
    lock = threading.Lock()
    latencies: list[float] = []  # of the good answers: a fast 503 must not make the figures look better
    n_sent = 0
    errors: dict[str, int] = {}

    def worker() -> None:
        nonlocal n_sent
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop()
            t0 = time.perf_counter()
            try:
                status, payload = post(conn, bodies[i])
                why = check(status, payload, batch)
            except (OSError, http.client.HTTPException) as exc:
                why = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            dt = time.perf_counter() - t0
            with lock:
                n_sent += 1
                if why is None:
                    latencies.append(dt)
                else:
                    errors[why] = errors.get(why, 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = len(latencies)
    lat_ms = np.array(latencies or [float("nan")]) * 1000
    return {
        "requests": n_sent,
        "concurrency": concurrency,
        "batch": batch,
        "wall_s": round(wall, 3),
        "requests_per_s": round(ok / wall, 3),  # answered in full, as are images_per_s and the latencies
        "images_per_s": round(ok * batch / wall, 3),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
        "p95_ms": round(float(np.percentile(lat_ms, 95)), 1),
        "max_ms": round(float(lat_ms.max()), 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="scorer folder or models:/..., runs:/... (starts a server for it)")
    src.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="images per request")
    ap.add_argument("--size", type=int, default=224, help="side of the synthetic JPEGs (pixels)")
    ap.add_argument("--images", default=None, help="use these image files (cycled) instead of synthetic ones")
    ap.add_argument("--mode", choices=["expected", "greedy"], default="expected")
    ap.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    ap.add_argument("--startup-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    for name in ("requests", "concurrency", "batch", "size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")

    images = image_files(args.images) if args.images else synthetic_jpegs(max(args.batch, 16), args.size)
    bodies = make_bodies(images, args.requests, args.batch, args.mode)
    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="serve-load-")
    try:
        if args.url:
            parts = urlsplit(args.url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            if get(host, port, "/ping") != 200:
                raise SystemExit(f"{args.url}/ping does not answer 200: is the server up and loaded?")
        else:
            started = time.perf_counter()
            proc, port = start_server(args.model, Path(tmp.name) / "serve.log", args.startup_timeout)
            host = "127.0.0.1"
            print(f"server ready in {time.perf_counter() - started:.1f} s (pid {proc.pid}, port {port})")
        res = run_load(host, port, bodies, args.batch, args.concurrency, args.timeout)
        res.update(
            mode=args.mode,
            image_size=None if args.images else args.size,
            body_kb=round(sum(map(len, bodies[1:])) / len(bodies[1:]) / 1024, 1),
            server_peak_rss_mb=round(peak_rss_mb(proc.pid), 1) if proc and peak_rss_mb(proc.pid) else None,
            model=args.model or args.url,
            cpus=os.cpu_count(),
        )
    finally:
        if proc is not None:
            stop_server(proc)
        tmp.cleanup()

    print(
        f"{res['requests']} requests x {res['batch']} images, concurrency {res['concurrency']}, mode {res['mode']}, "
        f"~{res['body_kb']} kB per request\n"
        f"  {res['requests_per_s']} requests/s, {res['images_per_s']} images/s (wall {res['wall_s']} s)\n"
        f"  latency p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms, max {res['max_ms']} ms\n"
        f"  errors {res['errors']} {res['error_kinds'] or ''}"
        + (f"\n  server peak RSS {res['server_peak_rss_mb']} MB" if res["server_peak_rss_mb"] else "")
    )
    print(json.dumps(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
