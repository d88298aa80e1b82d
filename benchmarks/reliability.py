"""Reliability in figures: fuzzed media and label files, and a serving soak, with nothing lost.

Every category feeds many generated bad inputs through the project's real entry points and counts
where each one ended. An input is **scored** (a score, or a valid manifest row), **reported** (a
refusal that names the input and the reason: a quarantine row, an `error` cell, a 4xx body, a clear
`ValueError`), **crashed** (a traceback, a 5xx, a process killed), **hung** (not finished within the
per-item bound) or **lost** (none of these: missing from the output, or a row with neither a score
nor a reason, or a bad row let through as valid). `lost` must be 0, as must `crashed` and `hung`.
Cases whose outcome is known in advance (a zero-byte file is reported, a 16-bit PNG is scored, a
symlink to a file outside the dataset root is refused) are also checked: `unexpected` counts the
misses and `examples` shows a few.

Categories (`--quick` runs each at a small size, ≤ 5 min on 2 cores):

- `media_validate`, `media_annotate`, `media_score`, `media_serve`: one set of media mutants
  (truncations at random offsets, flipped bytes, wrong extensions, zero-byte files, huge declared
  dimensions with tiny payloads, animated and multi-page images, 16-bit / alpha / CMYK / palette
  modes, videos with a broken index or no video stream, symlinks out of the dataset root, dangling
  links, a FIFO, names with `..`, unicode and spaces) through `qualitune.ingest` + the validation
  gate, `qualitune annotate DIR`, `qualitune score DIR --out` and `qualitune serve` (one row per
  request). The CLI and the server run as subprocesses under a deadline (the per-item bound times
  the number of items), with their peak RSS recorded.
- `labels`: malformed label files (missing columns, duplicate names, NaN/inf/negative MOS, MOS
  outside the scale, mixed encodings, a BOM, empty files, many rows) through every ingest adapter
  (`qualitune.ingest.FORMATS`) and the gate: a clear error or quarantined rows, never a shorter
  manifest and never a bad row passed as valid.
- `faults`: the fault-injection tests (tests/test_faults.py, and the retraining flow on data the
  gate refuses), one case each: a full disk while a checkpoint or the scorer is written, MLflow
  failing mid-run, SIGKILL at random points of `register` and of the whole retraining flow, two
  `dvc repro` at once (the slow ones in the full run only).
- `soak`: `qualitune serve` on loopback with `serve.max_pending` 2 and more client threads than
  that, a mix of valid, invalid and oversized requests: admitted valid requests must all get scores,
  every shed request a 503 with Retry-After; RSS growth after warm-up and latency percentiles.

    python benchmarks/reliability.py [--quick] [--seed N] [--only media,labels,soak,faults] [--out FILE]

Prints a table, then one JSON object on the last line (also written to `--out`).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import logging
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark (serve_load)
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's media and tiny-model factories
from media_factory import photo, write_image, write_mp4  # noqa: E402
from serve_load import get, post, start_server, stop_server  # noqa: E402

OUTCOMES = ("scored", "reported", "crashed", "hung", "lost")
PER_ITEM_S = 10.0  # the per-item time bound: a component's deadline is this times its items, plus start-up
STARTUP_S = 120.0
# The memory bound of a CLI run over the whole mutant folder (peak RSS of the process; the tiny scorer,
# torch and the annotators take ~0.6-0.8 GB): a decompression bomb that were decoded would pass it by far.
CLI_RSS_BOUND_MB = 2048.0
ANNOTATORS = "sharpness,noise,contrast"  # fast annotators: the fuzzing is about reading files, not NIQE


# ---------------------------------------------------------------------------------------------------------
# Outcome bookkeeping


@dataclass
class Tally:
    """Outcome counts of one category, plus the cases whose known outcome was missed."""

    cases: int = 0
    counts: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # case -> (outcome, reason)

    def add(self, case: str, outcome: str, expect: str | None = None, why: str = "") -> None:
        assert outcome in OUTCOMES, outcome
        self.cases += 1
        self.counts[outcome] += 1
        self.outcomes[case] = (outcome, why)
        if expect is not None and outcome != expect:
            self.unexpected.append(f"{case}: {outcome}, expected {expect} ({why[:160]})")

    def as_dict(self) -> dict:
        return {
            "cases": self.cases,
            **{o: int(self.counts[o]) for o in OUTCOMES},
            "unexpected": len(self.unexpected),
            **self.extra,
            "examples": self.unexpected[:8],
        }


def run_cli(argv: list[str], timeout: float, cwd: Path | None = None) -> dict:
    """`python -m qualitune.cli ARGV` under a deadline: exit status, stderr tail, whether it raised an
    uncaught exception (a traceback), timed out, its wall time and peak RSS (sampled every 50 ms)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qualitune.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
            env=env,
        )
        t0, timed_out, peak = time.monotonic(), False, 0.0
        while True:
            peak = max(peak, _hwm_mb(proc.pid))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                _, status, _ = os.wait4(proc.pid, 0)
                timed_out = True
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return {
        "rc": proc.returncode,
        "stderr": text[-4000:],
        "traceback": "Traceback (most recent call last)" in text,
        "timed_out": timed_out,
        "s": round(time.monotonic() - t0, 2),
        "peak_rss_mb": round(peak, 1),
    }


def _hwm_mb(pid: int) -> float:
    """The process's peak RSS since its exec (VmHWM), in MB; 0 once it is gone.

    Not `wait4`'s `ru_maxrss`: Linux folds the forking parent's peak into the child's at exec, so a
    CLI started from a big process (the test suite) would report the parent's size."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# ---------------------------------------------------------------------------------------------------------
# Media mutants


@dataclass(frozen=True)
class Mutant:
    """One generated input. `name`: as written in the label file (relative to the dataset root's
    `images/`); `expect`: the known outcome, or None where either is right (a truncation that happens
    to keep a decodable file); `listed`: a media file in the folder that `annotate`/`score` list."""

    name: str
    family: str
    expect: str | None
    listed: bool = True
    outside: bool = False  # its bytes live outside the dataset root: must never be scored


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring `width` x `height` with a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def huge_jpeg(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is patched to declare `width` x `height`."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def huge_bmp(width: int, height: int) -> bytes:
    """A BMP header (54 bytes) declaring `width` x `height`, 24-bit, followed by 16 bytes of pixels."""
    body = b"\x80" * 16
    header = b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0)
    return header + info + body


def audio_only(path: Path) -> Path:
    """A Matroska file with one PCM audio stream and no video stream."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="stereo")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def make_media_mutants(root: Path, n_random: int, seed: int) -> list[Mutant]:
    """Write the mutants under `root/images/` (and a secret file under `root.parent/outside/`, which
    the dataset must never read). `n_random` truncations and as many byte-flip mutants per seed file."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    seeds_dir = root.parent / "seeds"
    muts: list[Mutant] = []
    counter = iter(range(10**6))

    def put(name: str, data: bytes, family: str, expect: str | None) -> None:
        (images / name).write_bytes(data)
        muts.append(Mutant(name, family, expect))

    def pic(size=(64, 48)) -> Image.Image:
        return Image.fromarray(photo(int(next(counter)) + 100, size))

    # the seed files the random mutants start from
    seeds = {
        "jpg": write_image(seeds_dir / "s.jpg", seed=1).read_bytes(),
        "png": write_image(seeds_dir / "s.png", seed=2).read_bytes(),
        "gif": _gif(seeds_dir / "s.gif", [pic(), pic()]).read_bytes(),
        "mp4": write_mp4(seeds_dir / "s.mp4", n_frames=6, seed=3).read_bytes(),
        "faststart.mp4": write_mp4(seeds_dir / "f.mp4", n_frames=6, seed=4, faststart=True).read_bytes(),
    }
    # valid files in every container and mode the readers convert, and awkward names: all scored
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("BMP", "bmp"), ("TIFF", "tif"), ("WEBP", "webp")):
        _save(pic(), images / f"valid.{ext}", format=fmt)
        muts.append(Mutant(f"valid.{ext}", "valid", "scored"))
    modes = {
        "I16.png": lambda: Image.fromarray(photo(7)[..., 0].astype(np.uint16) * 257),
        "rgba.png": lambda: pic().convert("RGBA"),
        "la.png": lambda: pic().convert("LA"),
        "palette.png": lambda: pic().convert("P"),
        "palette_transparent.gif": lambda: pic().convert("P"),
        "bilevel.png": lambda: pic().convert("1"),
        "grey.jpg": lambda: pic().convert("L"),
        "cmyk.jpg": lambda: pic().convert("CMYK"),
        "float.tif": lambda: Image.fromarray(photo(8)[..., 1].astype(np.float32) / 255.0),
        "int32.tif": lambda: Image.fromarray(photo(9)[..., 2].astype(np.int32) * 1000),
        "rgba.webp": lambda: pic().convert("RGBA"),
    }
    for name, make in modes.items():
        kw = {"transparency": 0} if "transparent" in name else {}
        _save(make(), images / f"mode_{name}", **kw)
        muts.append(Mutant(f"mode_{name}", "mode", "scored"))
    _gif(images / "animated.gif", [pic(), pic(), pic()])
    pic().save(images / "animated.png", save_all=True, append_images=[pic(), pic()])
    pic().save(images / "multipage.tif", save_all=True, append_images=[pic()])
    muts += [Mutant(n, "animated", "scored") for n in ("animated.gif", "animated.png", "multipage.tif")]
    for name in ("café 写真 ñ.jpg", "my photo (1).png", "a..b.jpg", "-dash.png", "#hash %20.jpg", "ünï.PNG"):
        _save(pic(), images / name, format="PNG" if name.lower().endswith(".png") else "JPEG")
        muts.append(Mutant(name, "name", "scored"))
    write_mp4(images / "valid.mp4", n_frames=4, seed=11)
    write_mp4(images / "one_frame.mp4", n_frames=1, seed=12)
    write_mp4(images / "valid.mkv", n_frames=3, seed=13)
    write_mp4(images / "valid.avi", n_frames=3, seed=14)
    muts += [Mutant(n, "video", "scored") for n in ("valid.mp4", "one_frame.mp4", "valid.mkv", "valid.avi")]

    # files that are not what their name says, or nothing at all: all reported
    for ext in ("jpg", "png", "mp4", "gif"):
        put(f"zero.{ext}", b"", "zero-byte", "reported")
    put("text.jpg", b"this is not an image\n" * 20, "not-media", "reported")
    put("random.png", rng.bytes(2048), "not-media", "reported")
    put("html.mp4", b"<html><body>404 not found</body></html>", "not-media", "reported")
    put("header_only.png", seeds["png"][:33], "truncated-header", "reported")
    put("mp4_as.jpg", seeds["mp4"], "wrong-extension", "reported")
    put("png_as.jpg", seeds["png"], "wrong-extension", "scored")  # the bytes are a real image
    put("jpg_as.png", seeds["jpg"], "wrong-extension", "scored")
    put("jpg_as.mp4", seeds["jpg"], "wrong-extension", None)  # FFmpeg may read it as a 1-frame video
    put("png_as.avi", seeds["png"], "wrong-extension", None)
    put("notes.txt", b"not a media file", "not-media", "reported")  # unknown extension: reported by the gate
    muts[-1] = Mutant("notes.txt", "not-media", "reported", listed=False)
    for w, h in ((100_000, 100_000), (20_000, 20_000), (10_000, 10_000), (6_000, 6_000)):
        put(f"huge_{w}.png", huge_png(w, h), "huge-dimensions", "reported")
    put("huge_jpeg.jpg", huge_jpeg(seeds["jpg"], 65_000, 65_000), "huge-dimensions", "reported")
    put("huge_bmp.bmp", huge_bmp(50_000, 50_000), "huge-dimensions", "reported")
    mp4 = seeds["mp4"]
    put("no_index.mp4", mp4.replace(b"moov", b"free"), "broken-index", None)  # FFmpeg may rebuild it
    put("index_lost.mp4", mp4[: len(mp4) // 2], "broken-index", None)  # moov is last: usually gone
    put("no_mdat.mp4", mp4.replace(b"mdat", b"free"), "broken-index", None)
    audio_only(images / "audio_only.mkv")
    muts.append(Mutant("audio_only.mkv", "no-video-stream", "reported"))

    # links and special files: never read outside the root, never hang on a FIFO
    write_image(outside / "secret.png", seed=99)
    os.symlink(outside / "secret.png", images / "link_outside.png")
    muts.append(Mutant("link_outside.png", "symlink-outside", "reported", outside=True))
    os.symlink(outside / "secret.png", images / "link_outside.mp4")
    muts.append(Mutant("link_outside.mp4", "symlink-outside", "reported", outside=True))
    os.symlink("valid.png", images / "link_inside.png")
    muts.append(Mutant("link_inside.png", "symlink-inside", None))  # the same bytes as valid.png
    os.symlink("/nonexistent/qualitune/x.png", images / "dangling.png")
    muts.append(Mutant("dangling.png", "dangling-link", "reported", listed=False))
    os.symlink("loop.jpg", images / "loop.jpg")
    muts.append(Mutant("loop.jpg", "link-loop", "reported", listed=False))
    os.mkfifo(images / "pipe.jpg")
    muts.append(Mutant("pipe.jpg", "fifo", "reported", listed=False))
    (images / "folder.jpg").mkdir()
    muts.append(Mutant("folder.jpg", "directory", "reported", listed=False))
    # label-only names: a missing file, paths that climb out of the root
    muts.append(Mutant("nosuch.jpg", "missing", "reported", listed=False))
    muts.append(Mutant("../../outside/secret.png", "dotdot", "reported", listed=False, outside=True))
    muts.append(
        Mutant("../images/../../outside/secret.png", "dotdot", "reported", listed=False, outside=True)
    )
    muts.append(
        Mutant(str(outside / "secret.png"), "absolute-outside", "reported", listed=False, outside=True)
    )

    # random damage: truncations at random offsets and flipped bytes, of every seed
    for stem, data in seeds.items():
        safe = stem.replace(".", "_")
        ext = stem.rsplit(".", 1)[-1] if "." in stem else stem
        for k in range(n_random):
            cut = int(rng.integers(1, len(data)))
            put(f"trunc_{safe}_{k}.{ext}", data[:cut], "truncated", None)
            flipped = bytearray(data)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                flipped[pos] ^= 1 << int(rng.integers(0, 8))
            put(f"flip_{safe}_{k}.{ext}", bytes(flipped), "flipped-bytes", None)
    return muts


def _gif(path: Path, frames: list[Image.Image]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_media_labels(root: Path, muts: list[Mutant]) -> Path:
    """The dataset's label file: every mutant, one split (identical pixels may legitimately repeat)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    labels = pd.DataFrame(
        {"name": [m.name for m in muts], "mos": rng.uniform(1, 5, len(muts)).round(3), "split": "train"}
    )
    path = root / "labels.csv"
    labels.to_csv(path, index=False)
    return path


def _outcome(m: Mutant, scored: bool, reason: str) -> str:
    if scored:
        return "scored"
    return "reported" if reason.strip() else "lost"


def _tally_rows(tally: Tally, muts: list[Mutant], rows: dict[str, tuple[bool, str]]) -> None:
    """Count each mutant's row; a scored mutant whose bytes live outside the root is a read outside it."""
    outside_reads = 0
    for m in muts:
        if m.name not in rows:
            tally.add(m.name, "lost", m.expect, "no output row")
            continue
        scored, reason = rows[m.name]
        outside_reads += int(scored and m.outside)
        tally.add(m.name, _outcome(m, scored, reason), m.expect, reason)
    tally.extra["outside_reads"] = outside_reads


def fuzz_validate(root: Path, muts: list[Mutant]) -> Tally:
    """ingest (csv adapter) + the GX gate, in this process: every label row ends valid or quarantined
    with a reason; the manifest has every label row."""
    from qualitune.ingest import ingest
    from qualitune.validate import validate_manifest

    tally = Tally()
    t0 = time.monotonic()
    try:
        manifest = ingest("csv", root, labels="labels.csv", scale=(1, 5), split_col="split", val_from_train=0)
        outcome = validate_manifest(manifest, workers=1, render_html=False)
    except Exception as exc:
        for m in muts:
            tally.add(m.name, "crashed", m.expect, repr(exc))
        return tally
    elapsed = time.monotonic() - t0
    names = {iid.split("/", 1)[1] for iid in manifest["item_id"]}
    rows: dict[str, tuple[bool, str]] = {}
    for iid in outcome.valid["item_id"]:
        rows[iid.split("/", 1)[1]] = (True, "")
    for iid, reason in zip(outcome.quarantine["item_id"], outcome.quarantine["reason"], strict=True):
        rows[iid.split("/", 1)[1]] = (False, str(reason))
    if elapsed > PER_ITEM_S * len(muts):
        for m in muts:
            tally.add(m.name, "hung", m.expect, f"{elapsed:.0f} s")
        return tally
    _tally_rows(tally, muts, rows)
    tally.extra.update(manifest_rows=len(manifest), label_rows=len(muts), s=round(elapsed, 2))
    tally.extra["missing_from_manifest"] = len({m.name for m in muts} - names)
    return tally


def _listed(muts: list[Mutant]) -> list[Mutant]:
    return [m for m in muts if m.listed]


def _by_file(root: Path, path: str) -> str:
    """A CLI's output path back to the mutant's name (relative to images/)."""
    p = Path(path)
    try:
        return os.path.relpath(os.path.abspath(p), os.path.abspath(root / "images"))
    except ValueError:
        return path


def fuzz_cli(root: Path, muts: list[Mutant], argv: list[str], out: Path, read: Callable) -> Tally:
    """Run a CLI over the dataset's images/ folder; one output row per listed file."""
    listed = _listed(muts)
    tally = Tally()
    res = run_cli(argv, timeout=STARTUP_S + PER_ITEM_S * len(listed))
    tally.extra.update(
        s=res["s"],
        peak_rss_mb=res["peak_rss_mb"],
        rss_bound_mb=CLI_RSS_BOUND_MB,
        over_memory_bound=res["peak_rss_mb"] > CLI_RSS_BOUND_MB,
        rc=res["rc"],
    )
    if res["timed_out"] or res["traceback"] or res["rc"] not in (0, 1):
        outcome = "hung" if res["timed_out"] else "crashed"
        for m in listed:
            tally.add(m.name, outcome, m.expect, res["stderr"][-300:])
        return tally
    rows = read(out, root)
    _tally_rows(tally, listed, rows)
    tally.extra["extra_rows"] = len(set(rows) - {m.name for m in listed})
    return tally


def _read_annotations(out: Path, root: Path) -> dict[str, tuple[bool, str]]:
    import pandas as pd

    df = pd.read_csv(out, keep_default_na=False, na_values=[""])
    cols = ANNOTATORS.split(",")
    rows = {}
    for _, r in df.iterrows():
        err = "" if pd.isna(r["error"]) else str(r["error"])
        finite = all(np.isfinite(float(r[c])) for c in cols if not pd.isna(r[c])) and not r[cols].isna().any()
        rows[_by_file(root, r["path"])] = (finite and not err, err)
    return rows


def _read_scores(out: Path, root: Path) -> dict[str, tuple[bool, str]]:
    rows = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        name = _by_file(root, r["path"])
        if name in rows:  # a file with two rows is a duplicate, which the resume logic must not make
            rows[name] = (False, "")
        else:
            rows[name] = (r.get("score") is not None, r.get("error") or "")
    return rows


def fuzz_annotate(root: Path, muts: list[Mutant]) -> Tally:
    out = root.parent / "annotations.csv"
    argv = ["annotate", str(root / "images"), "--annotators", ANNOTATORS, "--out", str(out), "--workers", "1"]
    return fuzz_cli(root, muts, argv, out, _read_annotations)


def fuzz_score(root: Path, muts: list[Mutant], model: Path) -> Tally:
    out = root.parent / "scores.jsonl"
    argv = ["score", str(root / "images"), "--model", str(model), "--out", str(out), "--device", "cpu"]
    return fuzz_cli(root, muts, argv, out, _read_scores)


def fuzz_serve(root: Path, muts: list[Mutant], port: int) -> Tally:
    """Each listed mutant's bytes as one single-row request to a running server."""
    tally = Tally()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PER_ITEM_S)
    for m in _listed(muts):
        body = json.dumps(
            {
                "dataframe_records": [
                    {"image": base64.b64encode((root / "images" / m.name).read_bytes()).decode()}
                ]
            }
        ).encode()
        try:
            status, payload = post(conn, body)
        except TimeoutError:
            tally.add(m.name, "hung", m.expect, "no answer in time")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PER_ITEM_S)
            continue
        except (OSError, http.client.HTTPException) as exc:
            tally.add(m.name, "crashed", m.expect, repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PER_ITEM_S)
            continue
        outcome, why = _serve_outcome(status, payload)
        # the server sees bytes only: no root (links), no extension (it sniffs the container)
        expect = None if m.outside or m.family in ("wrong-extension", "symlink-inside") else m.expect
        tally.add(m.name, outcome, expect, why)
    conn.close()
    return tally


def _serve_outcome(status: int, payload: bytes) -> tuple[str, str]:
    try:
        body = json.loads(payload)
    except ValueError:
        return ("crashed" if status >= 500 else "lost"), payload[:200].decode(errors="replace")
    if status >= 500:
        return "crashed", str(body)[:200]
    if status == 200:
        pred = body["predictions"][0]
        if pred.get("score") is not None:
            return "scored", ""
        return ("reported" if pred.get("error") else "lost"), str(pred.get("error"))
    errors = body.get("errors") or []
    return ("reported" if body.get("message") and (errors or status == 413) else "lost"), body.get(
        "message", ""
    )


# ---------------------------------------------------------------------------------------------------------
# Label files


def _label_images(folder: Path, names: list[str], ext: str = ".png") -> None:
    """One small distinct PNG per name (hard links would share content; the gate hashes pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    clip = write_mp4(folder / ".seed.mp4", n_frames=1).read_bytes() if ext == ".mp4" and names else b""
    for i, n in enumerate(names):
        p = folder / (n if Path(n).suffix else n + ext)
        p.parent.mkdir(parents=True, exist_ok=True)
        if clip:  # the gate only probes headers here: one clip's bytes serve every name
            p.write_bytes(clip)
            continue
        arr = np.full((8, 8, 3), (i * 37) % 256, np.uint8)
        arr[0, : min(8, 1 + i % 8)] = (i // 256) % 256
        Image.fromarray(arr).save(p)


@dataclass(frozen=True)
class LabelCase:
    """One malformed (or clean) label file. `bad_rows`: rows that must not pass the gate;
    `expect`: "reported" (an error, or quarantined rows) or "scored" (every row valid)."""

    name: str
    fmt: str
    write: Callable[[Path], dict]  # writes the dataset under the folder; returns ingest options
    n_rows: int
    bad_rows: int
    expect: str
    error: bool = False  # a clear ValueError at ingest is the expected report


def _table(names, mos, name_col="name", mos_col="mos", extra=None) -> dict:
    cols = {name_col: names, mos_col: mos}
    cols.update(extra or {})
    return cols


def _write_table(
    path: Path, cols: dict, *, kind: str = "csv", encoding: str = "utf-8", raw: bytes | None = None
):
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_bytes(raw)
    elif kind == "xlsx":
        pd.DataFrame(cols).to_excel(path, index=False)
    else:
        pd.DataFrame(cols).to_csv(path, index=False, encoding=encoding)


# How each adapter lays a table out: label file, name column, MOS column, media folder, scale, extras.
LAYOUTS = {
    "csv": ("labels.csv", "name", "mos", "images", (1, 5), {}),
    "koniq10k": ("koniq10k_scores_and_distributions.csv", "image_name", "MOS", "1024x768", (1, 5), {}),
    "spaq": (
        "Annotations/MOS and Image attribute scores.xlsx",
        "Image name",
        "MOS",
        "TestImage",
        (0, 100),
        {},
    ),
    "kadid10k": ("dmos.csv", "dist_img", "dmos", "images", (1, 5), {"ref_img": "I01.png"}),
    "biq2021": ("Train (Images and MOS).csv", "Image Name", "MOS", "Images", (0, 1), {}),
    "vquala": ("labels.csv", "video_name", "Overall_MOS", "videos", (1, 5), {}),
    "lsvq": ("labels_train_test.csv", "name", "mos", "videos", (0, 100), {"is_test": "False"}),
}


def _layout_writer(fmt: str, names: list[str], mos: list, *, mutate: str = "", n_images: int | None = None):
    """A writer of dataset `fmt` with these rows, damaged as `mutate` says."""
    label, name_col, mos_col, folder, _scale, extra = LAYOUTS[fmt]

    def write(root: Path) -> dict:
        ext = ".mp4" if fmt in ("lsvq", "vquala") else ".png"
        _label_images(root / folder, names[: n_images if n_images is not None else len(names)], ext)
        cols = _table(names, mos, name_col, mos_col, {k: [v] * len(names) for k, v in extra.items()})
        if mutate == "missing_column":
            cols.pop(mos_col)
        if mutate == "renamed_column":
            cols["score"] = cols.pop(mos_col)
        kind = "xlsx" if label.endswith(".xlsx") else "csv"
        raw = None
        if mutate == "bom":
            import pandas as pd

            raw = b"\xef\xbb\xbf" + pd.DataFrame(cols).to_csv(index=False).encode()
        if mutate == "mixed_encoding":
            import pandas as pd

            text = pd.DataFrame(cols).to_csv(index=False)
            raw = text.encode() + f"caf\xe9.png,{mos[0]}\n".encode("latin-1")
        if mutate == "empty":
            raw = b""
        if mutate == "header_only":
            raw = (",".join(cols) + "\n").encode()
        _write_table(root / label, cols, kind=kind, raw=raw)
        if fmt == "biq2021":  # the adapter reads both official files: a clean test file of one row
            _label_images(root / folder, ["test0000.png"])
            _write_table(
                root / "Test (Images and MOS).csv", _table(["test0000.png"], [0.5], name_col, mos_col)
            )
        return {}

    return write


def _livec_writer(names: list[str], mos: list, *, mutate: str = ""):
    def write(root: Path) -> dict:
        from scipy.io import savemat

        _label_images(root / "Images", names)
        data = root / "Data"
        data.mkdir(parents=True)
        cells = np.empty((len(names), 1), dtype=object)
        for i, n in enumerate(names):
            cells[i, 0] = np.array([n])
        savemat(data / "AllImages_release.mat", {"AllImages_release": cells})
        m = np.asarray(mos, dtype=float)
        if mutate == "length_mismatch":
            m = m[:-1]
        key = "AllMOS_release" if mutate != "wrong_variable" else "MOS"
        savemat(data / "AllMOS_release.mat", {key: m.reshape(1, -1)})
        savemat(data / "AllStdDev_release.mat", {"AllStdDev_release": np.full((1, len(names)), 5.0)})
        if mutate == "not_mat":
            (data / "AllMOS_release.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + b"\x00" * 50)
        return {}

    return write


def make_label_cases(n_rows: int, big_rows: int) -> list[LabelCase]:
    """For every adapter: a clean file, then each kind of damage (with the rows it must stop)."""
    cases: list[LabelCase] = []
    for fmt, (_label, _n, _m, _f, (lo, hi), _e) in LAYOUTS.items():
        names = [f"img{i:04d}.png" if fmt not in ("lsvq",) else f"clip{i:04d}" for i in range(n_rows)]
        if fmt == "vquala":
            names = [f"clip{i:04d}.mp4" for i in range(n_rows)]
        if fmt == "kadid10k":
            names = [f"I01_{1 + i % 25:02d}_{1 + i // 25:02d}.png" for i in range(n_rows)]
        good = list(np.linspace(lo, hi, n_rows).round(4))
        bad_values = [float("nan"), float("inf"), -1.0 - abs(lo), hi * 3 + 1, "abc", ""]
        damaged = list(good)
        for i, v in enumerate(bad_values):
            damaged[1 + i] = v
        dup = list(names)
        dup[2] = dup[1]
        cases += [
            LabelCase(f"{fmt}:clean", fmt, _layout_writer(fmt, names, good), n_rows, 0, "scored"),
            LabelCase(
                f"{fmt}:bad_mos",
                fmt,
                _layout_writer(fmt, names, damaged),
                n_rows,
                len(bad_values),
                "reported",
            ),
            LabelCase(f"{fmt}:duplicate_names", fmt, _layout_writer(fmt, dup, good), n_rows, 1, "reported"),
            LabelCase(
                f"{fmt}:missing_files",
                fmt,
                _layout_writer(fmt, names, good, n_images=n_rows - 2),
                n_rows,
                2,
                "reported",
            ),
            LabelCase(
                f"{fmt}:missing_column",
                fmt,
                _layout_writer(fmt, names, good, mutate="missing_column"),
                n_rows,
                0,
                "reported",
                True,
            ),
            LabelCase(
                f"{fmt}:renamed_column",
                fmt,
                _layout_writer(fmt, names, good, mutate="renamed_column"),
                n_rows,
                0,
                "reported",
                True,
            ),
        ]
        if not LAYOUTS[fmt][0].endswith(".xlsx"):
            cases += [
                LabelCase(
                    f"{fmt}:bom", fmt, _layout_writer(fmt, names, good, mutate="bom"), n_rows, 0, "scored"
                ),
                LabelCase(
                    f"{fmt}:mixed_encoding",
                    fmt,
                    _layout_writer(fmt, names, good, mutate="mixed_encoding"),
                    n_rows + 1,
                    0,
                    "reported",
                    True,
                ),
                LabelCase(
                    f"{fmt}:empty_file",
                    fmt,
                    _layout_writer(fmt, names, good, mutate="empty"),
                    0,
                    0,
                    "reported",
                    True,
                ),
                LabelCase(
                    f"{fmt}:header_only",
                    fmt,
                    _layout_writer(fmt, names, good, mutate="header_only"),
                    0,
                    0,
                    "reported",
                    True,
                ),
            ]
    names = [f"img{i:04d}.png" for i in range(n_rows)]
    good = list(np.linspace(0, 100, n_rows).round(3))
    damaged = list(good)
    damaged[1], damaged[2], damaged[3] = float("nan"), float("inf"), -5.0
    cases += [
        LabelCase("livec:clean", "livec", _livec_writer(names, good), n_rows, 0, "scored"),
        LabelCase("livec:bad_mos", "livec", _livec_writer(names, damaged), n_rows, 3, "reported"),
        LabelCase(
            "livec:length_mismatch",
            "livec",
            _livec_writer(names, good, mutate="length_mismatch"),
            n_rows,
            0,
            "reported",
            True,
        ),
        LabelCase(
            "livec:wrong_variable",
            "livec",
            _livec_writer(names, good, mutate="wrong_variable"),
            n_rows,
            0,
            "reported",
            True,
        ),
        LabelCase(
            "livec:not_mat",
            "livec",
            _livec_writer(names, good, mutate="not_mat"),
            n_rows,
            0,
            "reported",
            True,
        ),
    ]
    if big_rows:
        big = [f"img{i:07d}.png" for i in range(big_rows)]
        mos = list(np.random.default_rng(0).uniform(1, 5, big_rows).round(3))
        cases.append(
            LabelCase(
                "csv:many_rows",
                "csv",
                _layout_writer("csv", big, mos, n_images=0),
                big_rows,
                big_rows,
                "reported",
            )
        )
    return cases


def fuzz_labels(tmp: Path, cases: list[LabelCase]) -> Tally:
    """Each case through `qualitune.ingest.ingest` and the gate (header probe only: the labels are
    the subject). Lost: a manifest shorter than the label file, or a damaged row passed as valid."""
    from qualitune.ingest import ingest
    from qualitune.validate import validate_manifest

    tally = Tally()
    rows_lost = 0
    for k, case in enumerate(cases):
        root = tmp / f"labels{k}"
        root.mkdir(parents=True)
        options = case.write(root)
        lo, hi = LAYOUTS.get(case.fmt, (None,) * 4 + ((0, 100),))[4]
        if case.fmt in ("csv", "vquala"):
            options.update(scale=(lo, hi))
        t0 = time.monotonic()
        try:
            manifest = ingest(case.fmt, root, **options)
        except ValueError as exc:
            tally.add(case.name, "reported" if str(exc) else "lost", case.expect, str(exc))
            continue
        except Exception as exc:  # anything but a clear ValueError is a crash of the adapter
            tally.add(case.name, "crashed", case.expect, f"{type(exc).__name__}: {exc}")
            continue
        if case.error:
            tally.add(case.name, "lost", case.expect, f"no error; {len(manifest)} rows")
            rows_lost += max(0, case.n_rows - len(manifest))
            continue
        n_label_rows = case.n_rows + (case.fmt == "biq2021")  # + the official test file's row
        short = n_label_rows - len(manifest) - _conventional_drops(manifest)
        if short:
            rows_lost += short
            tally.add(case.name, "lost", case.expect, f"manifest has {len(manifest)} of {case.n_rows} rows")
            continue
        big = len(manifest) > 10_000
        try:
            if big:  # a million missing files: the gate's row accounting, not a million stat calls
                outcome = validate_manifest(
                    manifest.head(2000), check_media=False, workers=1, render_html=False
                )
            else:
                outcome = validate_manifest(manifest, check_media=False, workers=1, render_html=False)
        except Exception as exc:
            tally.add(case.name, "crashed", case.expect, f"{type(exc).__name__}: {exc}")
            continue
        if time.monotonic() - t0 > PER_ITEM_S + len(manifest) * 1e-3:
            tally.add(case.name, "hung", case.expect, f"{time.monotonic() - t0:.0f} s")
            continue
        checked = 2000 if big else len(manifest)
        n_q = len(outcome.quarantine)
        if len(outcome.valid) + n_q != checked or (n_q and (outcome.quarantine["reason"] == "").any()):
            rows_lost += checked - len(outcome.valid)
            tally.add(case.name, "lost", case.expect, "rows neither valid nor quarantined with a reason")
        elif n_q < min(case.bad_rows, checked):
            rows_lost += min(case.bad_rows, checked) - n_q
            tally.add(case.name, "lost", case.expect, f"{n_q} quarantined, {case.bad_rows} damaged")
        else:
            tally.add(
                case.name,
                "reported" if n_q else "scored",
                case.expect,
                "; ".join(outcome.quarantine["reason"][:2]),
            )
    tally.extra["rows_lost"] = rows_lost
    return tally


def _conventional_drops(manifest) -> int:
    return sum(d["count"] for d in manifest.attrs.get("qualitune", {}).get("dropped_rows", []))


# ---------------------------------------------------------------------------------------------------------
# Serving soak


def soak(port: int, pid: int, n_requests: int, concurrency: int, max_request_mb: float, seed: int) -> dict:
    """`n_requests` from `concurrency` threads: 70 % valid (1-4 images), 20 % invalid, 10 % oversized.

    Shed requests (503) must carry Retry-After; an admitted valid request must get a score for every
    image; invalid ones a 400, oversized ones a 413 (or the connection closed after it). A client
    waits 20 ms after a 503 (as a client honouring Retry-After would, shortened). A warm-up of the
    same mix (a fifth as many requests, at least 60; its answers are checked too) comes first: the
    first requests of each batch size grow the allocator's arenas and the server's thread pool once.
    RSS is read from /proc after it, at the middle and at the end of the run; latencies of the first
    and the second half are reported apart, so a server that slows down as it runs shows it."""
    rng = np.random.default_rng(seed)
    imgs = []
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(photo(200 + i, (96, 72))).save(buf, format="JPEG", quality=90)
        imgs.append(base64.b64encode(buf.getvalue()).decode())
    kinds = rng.choice(["valid", "invalid", "oversized"], size=n_requests, p=[0.7, 0.2, 0.1])
    big = base64.b64encode(rng.bytes(int(max_request_mb * 1024 * 1024 * 1.2))).decode()

    def body(kind: str, i: int) -> bytes:
        if kind == "valid":
            rows = [{"image": imgs[(i + j) % len(imgs)]} for j in range(1 + i % 4)]
        elif kind == "invalid":
            rows = [{"image": "not base64 !"}, {"image": base64.b64encode(b"text, not an image").decode()}]
        else:
            rows = [{"image": big}]
        return json.dumps({"dataframe_records": rows}).encode()

    def send(conn, kind: str, i: int):
        try:
            conn.request(
                "POST", "/invocations", body=body(kind, i), headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            return conn, resp.status, resp.read(), resp.getheader("Retry-After")
        except (OSError, http.client.HTTPException):
            conn.close()
            return http.client.HTTPConnection("127.0.0.1", port, timeout=120), None, b"", None

    n_warm = max(60, n_requests // 5)
    kinds = np.concatenate([np.resize(["valid"] * 8 + ["invalid", "oversized"], n_warm), kinds])
    lock = threading.Lock()
    stats, warm = Counter(), Counter()
    lat_ms: list[tuple[int, float]] = []
    rss: dict[str, float] = {}

    def worker(todo: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not todo:
                    break
                i = todo.pop(0)
                if i == n_warm + n_requests // 2:
                    rss["mid"] = _rss_mb(pid)
            kind = str(kinds[i])
            t0 = time.perf_counter()
            conn, status, payload, retry = send(conn, kind, i)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                c = stats if i >= n_warm else warm  # the warm-up's answers are checked, counted apart
                c["requests"] += 1
                if status == 503:
                    c["shed_503"] += 1
                    c["shed_without_retry_after"] += int(not retry)
                elif kind == "valid":
                    ok = status == 200 and all(
                        p.get("score") is not None for p in json.loads(payload)["predictions"]
                    )
                    c["admitted_valid"] += 1
                    c["admitted_errors"] += int(not ok)
                    if ok and i >= n_warm:
                        lat_ms.append((i - n_warm, dt))
                elif kind == "invalid":
                    c["invalid_misanswered"] += int(status != 400)
                else:
                    c["oversized_misanswered"] += int(status not in (413, None))
            if status == 413:  # the server closes the connection after refusing a body
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            if status == 503:
                time.sleep(0.02)
        conn.close()

    def phase(todo: list[int]) -> float:
        threads = [threading.Thread(target=worker, args=(todo,)) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    phase(list(range(n_warm)))  # warm-up: the same mix and concurrency, counted but not timed
    rss["warm"] = _rss_mb(pid)
    wall = phase(list(range(n_warm, n_warm + n_requests)))
    rss["end"] = _rss_mb(pid)

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 1) if values else float("nan")

    every = [d for _, d in lat_ms]
    first = [d for i, d in lat_ms if i < n_requests // 2]
    second = [d for i, d in lat_ms if i >= n_requests // 2]
    return {
        "requests": int(stats["requests"]),
        "warm_up_requests": n_warm,
        "warm_up_errors": int(
            warm["admitted_errors"]
            + warm["shed_without_retry_after"]
            + warm["invalid_misanswered"]
            + warm["oversized_misanswered"]
        ),
        "concurrency": concurrency,
        "max_pending": 2,
        "admitted_valid": int(stats["admitted_valid"]),
        "admitted_errors": int(stats["admitted_errors"]),
        "shed_503": int(stats["shed_503"]),
        "shed_without_retry_after": int(stats["shed_without_retry_after"]),
        "invalid_misanswered": int(stats["invalid_misanswered"]),
        "oversized_misanswered": int(stats["oversized_misanswered"]),
        "rss_warm_mb": round(rss["warm"], 1),
        "rss_mid_mb": round(rss.get("mid", rss["end"]), 1),
        "rss_end_mb": round(rss["end"], 1),
        "rss_growth_mb": round(rss["end"] - rss["warm"], 1),
        "rss_bound_mb": RSS_BOUND_MB,
        "p50_ms": pct(every, 50),
        "p95_ms": pct(every, 95),
        "p50_first_half_ms": pct(first, 50),
        "p50_second_half_ms": pct(second, 50),
        "wall_s": round(wall, 1),
    }


RSS_BOUND_MB = 64.0  # stated bound on the server's RSS growth after warm-up


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_model(folder: Path) -> Path:
    """The test suite's untrained tiny scorer (spec only; the base rebuilds from its seed)."""
    from vlm_factory import tiny_scorer_dir

    return tiny_scorer_dir(folder)


def serve_params(folder: Path, max_request_mb: float) -> Path:
    path = folder / "serve-params.yaml"
    path.write_text(
        json.dumps({"serve": {"max_pending": 2, "max_request_mb": max_request_mb, "batch_size": 4}})
    )
    return path


# ---------------------------------------------------------------------------------------------------------
# Fault injection

# The fault-injection tests (a full disk, MLflow failing mid-run, SIGKILL in `register` and of the
# retraining flow, a refused data gate in the retraining flow, two `dvc repro` at once): run, not
# copied, and counted here. The slow ones (MLflow mid-run, SIGKILL) run in the full run only.
FAULT_TESTS = (
    "tests/test_faults.py",
    "tests/test_retrain.py::test_new_data_failing_the_gate_trains_nothing_and_says_why",
)


def fault_injection(tmp: Path, quick: bool) -> Tally:
    """Each fault-injection test is a case: `scored` when what must hold after the fault held."""
    import xml.etree.ElementTree as ET

    xml = tmp / "faults.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    cmd += ["-m", "not slow" if quick else "", *FAULT_TESTS]
    tally = Tally()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        tally.add("fault-injection tests", "hung", "scored", "over 30 min")
        return tally
    if not xml.is_file():
        tally.add("fault-injection tests", "crashed", "scored", proc.stdout[-300:] + proc.stderr[-300:])
        return tally
    for case in ET.parse(xml).iter("testcase"):
        name = case.get("name", "?")
        if case.find("skipped") is not None:
            continue
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        tally.add(
            name,
            "crashed" if bad is not None else "scored",
            "scored",
            "" if bad is None else bad.get("message", ""),
        )
    return tally


# ---------------------------------------------------------------------------------------------------------
# The run


SIZES = {  # (random mutants per seed file, label rows, big label file rows, soak requests)
    "quick": (6, 12, 100_000, 120),
    "full": (100, 40, 1_000_000, 1_000),
}


def run(quick: bool, seed: int, only: set[str], tmp: Path) -> dict:
    n_random, n_rows, big_rows, n_soak = SIZES["quick" if quick else "full"]
    result: dict = {"quick": quick, "seed": seed}
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # the subprocesses (CLI, server) run this checkout's source, as this process does
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
    )
    model = tiny_model(tmp / "scorer")
    if "media" in only or "soak" in only:
        max_mb = 1.0
        proc, port = start_server(
            str(model),
            tmp / "serve.log",
            STARTUP_S,
            extra=["--params", str(serve_params(tmp, max_mb)), "--device", "cpu"],
        )
        try:
            if "media" in only:
                root = tmp / "media" / "dataset"
                muts = make_media_mutants(root, n_random, seed)
                write_media_labels(root, muts)
                result["media_validate"] = fuzz_validate(root, muts).as_dict()
                result["media_annotate"] = fuzz_annotate(root, muts).as_dict()
                result["media_score"] = fuzz_score(root, muts, model).as_dict()
                result["media_serve"] = fuzz_serve(root, muts, port).as_dict()
                result["media_serve"]["server_alive"] = get("127.0.0.1", port, "/ping") == 200
            if "soak" in only:
                result["soak"] = soak(port, proc.pid, n_soak, concurrency=6, max_request_mb=max_mb, seed=seed)
        finally:
            stop_server(proc)
    if "labels" in only:
        result["labels"] = fuzz_labels(tmp / "labels", make_label_cases(n_rows, big_rows)).as_dict()
    if "faults" in only:
        result["faults"] = fault_injection(tmp, quick).as_dict()
    result["peak_rss_mb_self"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def table(result: dict) -> str:
    lines = [
        f"{'category':<16} {'cases':>6} " + " ".join(f"{o:>8}" for o in OUTCOMES) + f" {'unexpected':>10}"
    ]
    for name, r in result.items():
        if isinstance(r, dict) and "cases" in r:
            lines.append(
                f"{name:<16} {r['cases']:>6} "
                + " ".join(f"{r[o]:>8}" for o in OUTCOMES)
                + f" {r['unexpected']:>10}"
            )
            lines += [f"    ! {e}" for e in r["examples"]]
            if r["unexpected"] > len(r["examples"]):
                lines.append(f"    ! ... {r['unexpected'] - len(r['examples'])} more")
    if "soak" in result:
        s = result["soak"]
        lines.append(
            f"soak: {s['requests']} requests (concurrency {s['concurrency']}), {s['admitted_valid']} admitted valid, "
            f"{s['admitted_errors']} errors, {s['shed_503']} shed (503; {s['shed_without_retry_after']} without "
            f"Retry-After), RSS {s['rss_warm_mb']} -> {s['rss_end_mb']} MB (+{s['rss_growth_mb']}, bound "
            f"{s['rss_bound_mb']}), p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (≤ 5 min on 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only", default="media,labels,soak,faults", help="comma-separated: media, labels, soak, faults"
    )
    ap.add_argument("--out", default=None, help="also write the JSON here (e.g. reports/reliability.json)")
    args = ap.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if only - {"media", "labels", "soak", "faults"}:
        ap.error(f"--only takes media, labels, soak, faults; got {sorted(only)}")
    logging.getLogger("qualitune").setLevel(
        logging.ERROR
    )  # the tallies are the report, not one line per input
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qualitune-reliability-") as tmp:
        result = run(args.quick, args.seed, only, Path(tmp))
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(result, ensure_ascii=False))
    bad = sum(
        r.get(k, 0) for r in result.values() if isinstance(r, dict) for k in ("crashed", "hung", "lost")
    )
    over = [k for k, r in result.items() if isinstance(r, dict) and r.get("over_memory_bound")]
    if over:
        print(f"over the memory bound ({CLI_RSS_BOUND_MB:g} MB peak RSS): {over}", file=sys.stderr)
    return 1 if bad or over else 0


if __name__ == "__main__":
    sys.exit(main())
