"""Score many media files with several annotators: parallel, cached, one row per input.

Contract of `annotate_paths`: the output has exactly one row per input path, in input order, with
one float column per annotator and an `error` column. Nothing is dropped and nothing is invented:
an undecodable file gives NaN in every annotator column and its decode error; an annotator that
cannot score an item gives NaN in that cell and "<annotator>: <reason>" in `error` (several
reasons are joined with "; "). Videos are scored on `n_frames` frames sampled uniformly in time
(`qualitune.media.sample_frames`); the cell is the mean over those frames, or NaN with an error if
any frame fails (a mean over a subset would be a different measurement).

Cache: keyed by sha256(file bytes) + annotator name + annotator version + n_frames, in a sqlite file
`scores.sqlite` under `cache_dir`. Only successful scores are cached, so a failure is retried on
the next run; a modified file has a new hash and is rescored. The main process hashes and looks
up; workers only see items that still need scoring.
"""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from qualitune.annotators.catalog import get_annotator, resolve_annotators
from qualitune.errors import QualituneError
from qualitune.progress import Progress

CACHE_FILE = "scores.sqlite"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def score_file(path: str, names: Sequence[str], n_frames: int) -> tuple[dict[str, float], dict[str, str]]:
    """Score one file with each named annotator. Returns (scores, errors); a name is in exactly one.

    A decode failure is reported under the key "" (it concerns the file, not one annotator).
    """
    from qualitune.media import load_media

    try:
        frames = [np.asarray(im, dtype=np.uint8) for im in load_media(path, n_frames)]
    except Exception as exc:  # MediaError, and anything a codec throws: one file never stops a batch
        return {}, {"": str(exc) if str(exc) else type(exc).__name__}
    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name in names:
        try:
            ann = get_annotator(name)
            values = [ann.score(f) for f in frames]
            scores[name] = float(np.mean(values))
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
    return scores, errors


def _score_task(args: tuple[str, tuple[str, ...], int]) -> tuple[dict[str, float], dict[str, str]]:
    return score_file(*args)


class ScoreCache:
    """sqlite store of successful scores, keyed by content hash + annotator + version + n_frames."""

    def __init__(self, cache_dir: str | Path):
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(cache_dir) / CACHE_FILE
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS scores (sha256 TEXT, annotator TEXT, version TEXT, n_frames INTEGER, "
            "score REAL NOT NULL, PRIMARY KEY (sha256, annotator, version, n_frames))"
        )

    def get(self, sha: str, name: str, version: str, n_frames: int) -> float | None:
        row = self._db.execute(
            "SELECT score FROM scores WHERE sha256=? AND annotator=? AND version=? AND n_frames=?",
            (sha, name, version, n_frames),
        ).fetchone()
        return None if row is None else float(row[0])

    def put_many(self, rows: list[tuple[str, str, str, int, float]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self._db.close()


def annotate_paths(
    paths: Sequence[str | Path],
    annotators: list[str],
    *,
    n_frames: int = 2,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Score every path with every annotator; see the module docstring for the row contract.

    `workers` defaults to os.cpu_count(); 1 scores in this process (no pool). The returned frame's
    `attrs` hold `n_scored` (annotator calls made, per item x annotator) and `n_cached` (cells
    served from the cache).
    """
    if n_frames < 1:
        raise QualituneError(f"n_frames must be >= 1, got {n_frames}")
    if workers is not None and workers < 1:
        raise QualituneError(f"workers must be >= 1, got {workers}")
    anns = resolve_annotators(annotators)
    names = [a.name for a in anns]
    versions = {a.name: a.version for a in anns}
    paths = [str(p) for p in paths]
    scores = np.full((len(paths), len(names)), np.nan)
    errors: list[dict[str, str]] = [{} for _ in paths]

    cache = ScoreCache(cache_dir) if cache_dir is not None else None
    shas: list[str | None] = [None] * len(paths)
    todo: list[tuple[int, tuple[str, ...]]] = []
    n_cached = 0
    try:
        for i, p in enumerate(paths):
            missing = names
            if cache is not None:
                try:
                    shas[i] = file_sha256(p)
                except OSError:
                    shas[i] = None  # unreadable: the worker reports the real error
                if shas[i] is not None:
                    missing = []
                    for j, n in enumerate(names):
                        hit = cache.get(shas[i], n, versions[n], n_frames)
                        if hit is None:
                            missing.append(n)
                        else:
                            scores[i, j] = hit
                            n_cached += 1
            if missing:
                todo.append((i, tuple(missing)))

        tasks = [(paths[i], miss, n_frames) for i, miss in todo]
        n_workers = min(workers or os.cpu_count() or 1, max(len(tasks), 1))
        progress = Progress(len(tasks), f"annotating ({len(names)} annotators, {n_workers} workers)", "files")
        if n_workers == 1:
            results = []
            for t in tasks:
                results.append(_score_task(t))
                progress.update(len(results))
        else:
            with ProcessPoolExecutor(max_workers=n_workers) as pool:
                results = []
                chunk = max(1, min(16, len(tasks) // (n_workers * 8)))
                for r in pool.map(_score_task, tasks, chunksize=chunk):
                    results.append(r)
                    progress.update(len(results))

        new_rows: list[tuple[str, str, str, int, float]] = []
        col = {n: j for j, n in enumerate(names)}
        for (i, _miss), (sc, er) in zip(todo, results, strict=True):
            for n, v in sc.items():
                scores[i, col[n]] = v
                if cache is not None and shas[i] is not None and math.isfinite(v):
                    new_rows.append((shas[i], n, versions[n], n_frames, v))
            errors[i].update(er)
        if cache is not None and new_rows:
            cache.put_many(new_rows)
    finally:
        if cache is not None:
            cache.close()

    def _message(err: dict[str, str]) -> str:
        if "" in err:
            return err[""]
        return "; ".join(f"{n}: {err[n]}" for n in names if n in err)

    df = pd.DataFrame(scores, columns=names)
    df.insert(0, "path", paths)
    df["error"] = [_message(e) for e in errors]
    df.attrs["n_scored"] = sum(len(m) for _, m in todo)
    df.attrs["n_cached"] = n_cached
    return df
