"""A file of scores that a long `qualitune score DIR --out FILE` run can be interrupted and resumed on.

Rows are appended a chunk at a time (flushed and fsynced), so an interrupt loses at most the chunk
being scored, never a row already written. Re-opening the file:
- rows with a score are kept, and their files are skipped;
- rows with an error (unreadable file, unparsed answer) are retried: the file is rewritten without
  them, atomically, before any new row is appended, so each file ends with exactly one row;
- a half-written last line (the interrupt) is dropped, and said so; a malformed line elsewhere is an
  error, since dropping it would lose data that is not ours to guess at.
A file scored by another model or mode is refused: one file never mixes two scales.

The format follows the extension: `.csv` (levels as a JSON string) or `.jsonl` (one object a line).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from qualitune.errors import QualituneError

log = logging.getLogger(__name__)

FORMATS = (".csv", ".jsonl")
# CSV columns, in order; JSONL rows carry the same keys (those that apply)
COLUMNS = (
    "path",
    "score",
    "score_1_5",
    "mode",
    "model",
    "error",
    "invalid_mass",
    "answer",
    "description",
    "levels",
)


def key(path: str | os.PathLike) -> str:
    """The identity of a scored file: its absolute path (a re-run from another folder still matches)."""
    return os.path.abspath(os.fspath(path))


class ScoreFile:
    """The rows of one scores file, read on open; `append(rows)` writes more of them durably."""

    def __init__(self, path: str | Path, *, model: str, mode: str):
        self.path = Path(path)
        self.fmt = self.path.suffix.lower()
        if self.fmt not in FORMATS:
            raise QualituneError(
                f"--out {self.path}: unknown format {self.path.suffix!r}; use a .csv or .jsonl file"
            )
        self.model, self.mode = model, mode
        self.rows: list[dict[str, Any]] = []  # kept rows (all scored), in file order
        self.retried = 0  # error rows dropped to retry their files
        self.dropped_partial = False
        if self.path.exists() and self.path.stat().st_size:
            self._read()

    @property
    def done(self) -> set[str]:
        return {key(r["path"]) for r in self.rows}

    # ---- reading -------------------------------------------------------------------------------

    def _read(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        complete = text.endswith("\n")
        rows = self._parse(text, complete)
        for r in rows:
            for field, want in (("model", self.model), ("mode", self.mode)):
                if r.get(field) not in (None, "", want):
                    raise QualituneError(
                        f"{self.path} holds scores from {field} {r.get(field)!r}, not {want!r}: "
                        f"resume with the same --model and --mode, or write to another --out file"
                    )
        kept = [r for r in rows if r.get("score") is not None]
        self.retried = len(rows) - len(kept)
        self.rows = kept
        if self.retried or self.dropped_partial:
            self._rewrite()
        log.info(
            "%s: %d files already scored (skipped), %d failed before (retried)%s",
            self.path,
            len(kept),
            self.retried,
            "; dropped a half-written last line" if self.dropped_partial else "",
        )

    def _parse(self, text: str, complete: bool) -> list[dict[str, Any]]:
        lines = text.splitlines(keepends=True)
        if self.fmt == ".jsonl":
            out = []
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict) or "path" not in row:
                        raise QualituneError("not an object with a 'path'")
                except ValueError as exc:
                    if n == len(lines) and not complete:
                        self.dropped_partial = True
                        continue
                    raise QualituneError(
                        f"{self.path} line {n} is not a scores row ({exc}); fix or move the file"
                    ) from None
                out.append(row)
            return out
        if not complete and lines:
            lines, self.dropped_partial = lines[:-1], True
        reader = csv.DictReader(io.StringIO("".join(lines)))
        if reader.fieldnames is not None and "path" not in reader.fieldnames:
            raise QualituneError(f"{self.path} has no 'path' column: not a qualitune scores file")
        out = []
        for n, raw in enumerate(reader, 2):
            if None in raw or any(v is None for v in raw.values()):
                raise QualituneError(
                    f"{self.path} line {n} has the wrong number of fields; fix or move the file"
                )
            out.append(_from_csv(raw))
        return out

    # ---- writing -------------------------------------------------------------------------------

    def append(self, results: Iterable[Mapping[str, Any]]) -> None:
        """Append result dicts (from `Scorer.score_paths`), flushed to disk before returning."""
        rows = [self._row(r) for r in results]
        if not rows:
            return
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            fh.write(self._encode(rows, header=new))
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(r for r in rows if r.get("score") is not None)

    def _rewrite(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(self._encode(self.rows, header=True))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _row(self, r: Mapping[str, Any]) -> dict[str, Any]:
        row = {k: r[k] for k in COLUMNS if r.get(k) is not None}
        row.update(mode=self.mode, model=self.model)
        return row

    def _encode(self, rows: list[dict[str, Any]], *, header: bool) -> str:
        if self.fmt == ".jsonl":
            return "".join(json.dumps(r) + "\n" for r in rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        if header:
            w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if k == "levels" else v for k, v in r.items()})
        return buf.getvalue()


def _from_csv(raw: Mapping[str, str]) -> dict[str, Any]:
    """A CSV row back as the JSON row: empty cells absent, numbers as numbers."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        if v == "":
            continue
        if k in ("score", "score_1_5", "invalid_mass"):
            out[k] = float(v)
        elif k == "levels":
            out[k] = json.loads(v)
        else:
            out[k] = v
    return out


__all__ = ["COLUMNS", "FORMATS", "ScoreFile", "key"]
