"""Retraining building blocks: what changed in the raw data, DVC as a subprocess, and the registry's verdict.

The Prefect flow (``flows/retrain.py``) composes these; nothing here re-implements a stage. The
pipeline is ``dvc.yaml``, run by ``dvc repro``; the registry gate is its ``register`` stage, whose
report (``register.report``, default ``reports/register.json``) says whether the champion moved.

- :func:`snapshot_dir` / :func:`diff_snapshots`: the files of the raw data folder (``ingest.root``)
  with size, mtime and md5, compared with the snapshot of the last successful run (files added,
  changed, removed). Only files whose size or mtime moved are hashed again.
- :func:`import_files` / :func:`dvc_update`: the project's DVC import files (``dvc import``,
  ``dvc import-url``) and ``dvc update`` on them, reporting which imports brought new data.
- :func:`dvc_status` / :func:`dvc_repro`: ``dvc status --json`` (is anything stale?) and
  ``dvc repro`` (which stages ran, which were restored from the run cache, which were up to date).
- :func:`register_outcome`: the gate's decision as a small dict (versions, finals, moved or not).

DVC runs with the Python of this environment first on ``PATH`` (the stages call ``python -m
qualitune.stages.<name>``) and, when the project has its own ``src/qualitune``, with that on
``PYTHONPATH``, so the code DVC hashes as a stage dependency is the code that runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qualitune.errors import QualituneError

SNAPSHOT = ".qualitune/retrain_snapshot.json"
SNAPSHOT_VERSION = 1

# Failures worth another attempt: another DVC process holds the repo lock, a database or tracking
# server is busy or unreachable, a remote timed out. Anything else (a stage's own error, a failed data
# gate) fails the same way again, so it is not retried.
TRANSIENT_PATTERNS: tuple[str, ...] = (
    r"Unable to acquire lock",
    r"database is locked",
    r"Connection (refused|reset|aborted)",
    r"(Read|Connect)Timeout",
    r"timed out",
    r"Temporary failure in name resolution",
    r"temporarily unavailable",
    r"Too many connections",
    r"HTTP(Error)?\s*50[234]",
    r"\b50[234] (Bad Gateway|Service Unavailable|Gateway Time-?out)",
    r"CUDA out of memory",
)


class DvcError(RuntimeError):
    """A DVC command failed; ``output`` holds its combined stdout/stderr."""

    def __init__(self, args: Sequence[str], returncode: int, output: str) -> None:
        self.cmd = list(args)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-25:])
        super().__init__(f"`{' '.join(self.cmd)}` exited with {returncode}:\n{tail}")

    @property
    def transient(self) -> bool:
        return is_transient(self.output)


def is_transient(text: str) -> bool:
    """Whether a failure's output matches one of :data:`TRANSIENT_PATTERNS`."""
    return any(re.search(p, text, flags=re.IGNORECASE) for p in TRANSIENT_PATTERNS)


# ---------------------------------------------------------------------------------------------------------
# Raw data: snapshots and their difference


@dataclass(frozen=True)
class FileChanges:
    """Files added, changed (other content) and removed since the previous snapshot (posix relpaths)."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    baseline: bool = False  # there was no previous snapshot: every file counts as added

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def snapshot_dir(
    root: str | Path, previous: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict]:
    """``{relpath: {size, mtime_ns, md5}}`` for every file under ``root`` (hidden names skipped).

    A file whose size and mtime match ``previous`` keeps its recorded md5; the others are hashed.
    A missing ``root`` is an error: the flow must not mistake a moved dataset for an empty one.
    """
    root = Path(root)
    if not root.is_dir():
        raise QualituneError(f"raw data folder {root} does not exist (params ingest.root)")
    previous = previous or {}
    out: dict[str, dict] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            st = path.stat()
            rel = path.relative_to(root).as_posix()
            old = previous.get(rel)
            if old and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
                md5 = old["md5"]
            else:
                md5 = _md5(path)
            out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": md5}
    return out


def diff_snapshots(
    old: Mapping[str, Mapping[str, Any]] | None, new: Mapping[str, Mapping[str, Any]]
) -> FileChanges:
    """Added, changed (md5 differs; a touched file with the same bytes is unchanged) and removed files."""
    if old is None:
        return FileChanges(added=tuple(sorted(new)), baseline=True)
    added = tuple(sorted(set(new) - set(old)))
    removed = tuple(sorted(set(old) - set(new)))
    changed = tuple(sorted(k for k in set(new) & set(old) if new[k]["md5"] != old[k]["md5"]))
    return FileChanges(added=added, changed=changed, removed=removed)


def load_snapshot(path: str | Path, root: str | Path) -> dict[str, dict] | None:
    """The files of the last snapshot of ``root`` saved at ``path``, or None (none yet, or of another folder)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise QualituneError(
            f"{p} is not a retrain snapshot (delete it to start a new baseline): {exc}"
        ) from exc
    if data.get("version") != SNAPSHOT_VERSION or data.get("root") != Path(root).as_posix():
        return None
    return data["files"]


def save_snapshot(path: str | Path, root: str | Path, files: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write the snapshot atomically (a crash leaves the previous one)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": SNAPSHOT_VERSION, "root": Path(root).as_posix(), "files": dict(files)}
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=0, sort_keys=True)
    os.replace(tmp, p)
    return p


def raw_data_root(params: Mapping[str, Any]) -> str:
    """The raw data folder the pipeline reads: params ``ingest.root`` (relative to the project root)."""
    root = (params.get("ingest") or {}).get("root")
    if not isinstance(root, str) or not root.strip():
        raise QualituneError("params has no ingest.root: the raw data folder to watch for new data")
    return root


# ---------------------------------------------------------------------------------------------------------
# DVC as a subprocess


def dvc_env(project: str | Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment DVC (and its stages) run in: this interpreter's bin folder first on PATH, and
    the project's own ``src`` on PYTHONPATH when it has one."""
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    src = Path(project).resolve() / "src"
    if (src / "qualitune").is_dir():
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(src), *[p for p in parts if p != str(src)]])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_dvc(
    args: Sequence[str],
    project: str | Path,
    *,
    on_line: Callable[[str], None] | None = None,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``dvc ARGS`` in ``project`` (``python -m dvc`` of this environment); returns the combined
    output, calls ``on_line`` for each line as it arrives, raises :class:`DvcError` on a non-zero exit."""
    cmd = [sys.executable, "-m", "dvc", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=project,
        env=dict(env) if env is not None else dvc_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    killed = threading.Event()

    def _kill() -> None:
        killed.set()
        proc.kill()

    timer = threading.Timer(timeout_s, _kill) if timeout_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    output = "\n".join(lines)
    if killed.is_set():
        raise DvcError(
            ["dvc", *args], proc.returncode, output + f"\nkilled after the limit of {timeout_s:g} s"
        )
    if proc.returncode != 0:
        raise DvcError(["dvc", *args], proc.returncode, output)
    return output


def dvc_status(project: str | Path, targets: Sequence[str] = (), **kw: Any) -> dict[str, Any]:
    """``dvc status --json`` (with ``--with-deps`` for targets): ``{stage or file: [changes]}``; empty = up to date."""
    args = ["status", "--json"]
    if targets:
        args += ["--with-deps", *targets]
    out = run_dvc(args, project, **kw)
    for line in reversed(out.splitlines()):  # the JSON is one line; warnings may come before it
        if line.startswith("{"):
            return json.loads(line)
    raise DvcError(["dvc", *args], 0, f"no JSON in the output of dvc status:\n{out}")


_RAN = re.compile(r"^Running stage '([^']+)':")
_CACHED = re.compile(r"^Stage '([^']+)' is cached - skipping run")
_SKIPPED = re.compile(r"^(?:Stage )?'([^']+)' didn't change, skipping")


@dataclass
class ReproResult:
    """What ``dvc repro`` did: stages run, restored from the run cache, or already up to date."""

    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ran": self.ran, "cached": self.cached, "unchanged": self.unchanged}


def parse_repro_output(output: str) -> ReproResult:
    res = ReproResult(output=output)
    for line in output.splitlines():
        line = line.strip()
        for pattern, bucket in ((_RAN, res.ran), (_CACHED, res.cached), (_SKIPPED, res.unchanged)):
            m = pattern.match(line)
            if m and m.group(1) not in bucket:
                bucket.append(m.group(1))
    return res


def dvc_repro(project: str | Path, targets: Sequence[str] = (), **kw: Any) -> ReproResult:
    """``dvc repro [targets]``: the pipeline exactly as dvc.yaml defines it."""
    return parse_repro_output(run_dvc(["repro", *targets], project, **kw))


def import_files(project: str | Path) -> list[str]:
    """The project's DVC import files (``dvc import`` / ``dvc import-url``), relative to ``project``."""
    from dvc.repo import Repo

    project = Path(project).resolve()
    with Repo(str(project)) as repo:
        paths = {Path(s.path) for s in repo.index.stages if s.is_import}
    return sorted(p.relative_to(project).as_posix() for p in paths)


def _outs_hashes(dvc_file: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(dvc_file.read_text()) or {}
    keep = ("path", "md5", "hash", "size", "nfiles")
    return [{k: o.get(k) for k in keep if k in o} for o in data.get("outs") or []]


def dvc_update(project: str | Path, files: Iterable[str], **kw: Any) -> list[dict[str, Any]]:
    """``dvc update FILES``: fetch what changed upstream. Returns, per import file, its outputs' hashes
    before and after and whether they changed."""
    project = Path(project)
    files = list(files)
    if not files:
        return []
    before = {f: _outs_hashes(project / f) for f in files}
    run_dvc(["update", *files], project, **kw)
    result = []
    for f in files:
        after = _outs_hashes(project / f)
        result.append({"file": f, "changed": after != before[f], "before": before[f], "after": after})
    return result


# ---------------------------------------------------------------------------------------------------------
# The registry gate's verdict


def register_outcome(report_path: str | Path) -> dict[str, Any] | None:
    """The ``register`` stage's decision (``register.report``) reduced to what a summary needs, or None."""
    p = Path(report_path)
    if not p.is_file():
        return None
    d = json.loads(p.read_text())
    before, after = d.get("champion_version"), d.get("champion_after")
    return {
        "model_name": d.get("model_name"),
        "challenger_version": d.get("challenger_version"),
        "challenger_final": d.get("challenger_final"),
        "champion_before": before,
        "champion_final": d.get("champion_final"),
        "champion_after": after,
        "promoted": bool(d.get("promoted")),
        "champion_moved": after is not None and after != before,
        "reason": d.get("reason"),
        "mode": d.get("mode"),
        "model_uri": d.get("model_uri"),
    }


def _final(x: Any) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def champion_sentence(outcome: Mapping[str, Any] | None, register_ran: bool) -> str:
    if outcome is None:
        return "No registry decision: the register stage has not written its report."
    name = outcome["model_name"]
    if not register_ran:
        return (
            f"The register stage did not run; the champion stays models:/{name}@champion -> "
            f"v{outcome['champion_after']}."
        )
    if outcome["champion_moved"]:
        before = f"v{outcome['champion_before']}" if outcome["champion_before"] else "none"
        return (
            f"Champion moved: models:/{name}@champion {before} -> v{outcome['champion_after']} "
            f"(challenger final {_final(outcome['challenger_final'])} vs champion final "
            f"{_final(outcome['champion_final'])})."
        )
    return (
        f"Champion unchanged: models:/{name}@champion stays v{outcome['champion_after']}; challenger "
        f"v{outcome['challenger_version']} final {_final(outcome['challenger_final'])} vs champion final "
        f"{_final(outcome['champion_final'])}."
    )


def _list(items: Sequence[str], limit: int = 20) -> str:
    if not items:
        return "none"
    shown = ", ".join(f"`{i}`" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _any_changes(changes: Mapping[str, Any]) -> bool:
    return bool(changes["added"] or changes["changed"] or changes["removed"])


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The run summary as Markdown (the Prefect artifact)."""
    ch = summary["changes"]
    lines = [f"# qualitune retrain: {summary['status']}", "", summary["message"], ""]
    if ch.get("baseline"):
        lines += [
            f"**Raw data** `{summary['raw_root']}`: {len(ch['added'])} files (first run: baseline snapshot)",
            "",
        ]
    else:
        lines += [
            f"**Raw data** `{summary['raw_root']}`: {len(ch['added'])} added, {len(ch['changed'])} changed, "
            f"{len(ch['removed'])} removed",
            "",
        ]
    if not ch.get("baseline") and _any_changes(ch):
        lines += [
            f"- added: {_list(ch['added'])}",
            f"- changed: {_list(ch['changed'])}",
            f"- removed: {_list(ch['removed'])}",
            "",
        ]
    if summary.get("imports"):
        lines += ["**DVC imports** (`dvc update`):", ""]
        lines += [
            f"- `{i['file']}`: {'new data' if i['changed'] else 'unchanged'}" for i in summary["imports"]
        ]
        lines.append("")
    if summary.get("stale"):
        lines += [f"**Stale before the run** (`dvc status`): {_list(sorted(summary['stale']))}", ""]
    repro = summary.get("repro")
    if repro is not None:
        lines += [
            f"**Stages rerun**: {_list(repro['ran'])}",
            f"**Restored from the run cache**: {_list(repro['cached'])}",
            "",
        ]
    else:
        lines += ["**Stages rerun**: none (`dvc repro` skipped)", ""]
    lines += [f"**Registry**: {summary['champion']}", ""]
    reg = summary.get("register")
    if reg:
        lines += [
            "| | version | final |",
            "|---|---|---|",
            f"| challenger | {reg['challenger_version']} | {_final(reg['challenger_final'])} |",
            f"| champion before | {reg['champion_before'] or '-'} | {_final(reg['champion_final'])} |",
            f"| champion after | {reg['champion_after'] or '-'} | |",
            "",
            f"Gate: {reg['reason']}",
        ]
    return "\n".join(lines).rstrip() + "\n"


__all__ = [
    "SNAPSHOT",
    "TRANSIENT_PATTERNS",
    "DvcError",
    "FileChanges",
    "ReproResult",
    "champion_sentence",
    "diff_snapshots",
    "dvc_env",
    "dvc_repro",
    "dvc_status",
    "dvc_update",
    "import_files",
    "is_transient",
    "load_snapshot",
    "parse_repro_output",
    "raw_data_root",
    "register_outcome",
    "run_dvc",
    "save_snapshot",
    "snapshot_dir",
    "summary_markdown",
]
