"""MLflow tracking for the pipeline stages (train, evaluate, tune, register).

Settings come from the ``mlflow`` section of ``params.yaml``::

    mlflow:
      tracking_uri: sqlite:///mlflow.db   # relative sqlite paths: relative to the cwd (the project root)
      experiment: qualitune
      enabled: true
      artifact_location: null             # optional; only used when the experiment is created

A stage wraps its work in :func:`start_run` and logs through :func:`log_metrics`, :func:`log_params` and
:func:`log_artifacts`. With ``enabled: false`` the context yields ``None``, the helpers are no-ops and
MLflow is never imported, so nothing is written anywhere.

:func:`start_run` sets the tracking URI only for the duration of the run and restores the previous one
(including ``MLFLOW_TRACKING_URI``) afterwards; it never calls ``mlflow.set_experiment``, so no global
MLflow state leaks into later code or tests. MLflow's telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``,
unless the caller set it explicitly) and nothing here talks to the network unless the tracking URI is an
``http(s)://`` server.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from qualitune.errors import QualituneError

if TYPE_CHECKING:
    from mlflow import ActiveRun, MlflowClient

logger = logging.getLogger(__name__)

SECTION = "mlflow"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "qualitune"

# Limits of the installed MLflow (mlflow.utils.validation in 3.17), copied so that `flatten_params` and
# `tracking_settings` work without importing MLflow (~2 s); tests check them against the installed package.
MAX_PARAM_VAL_LENGTH = 6000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000

# Schemes accepted for `mlflow.tracking_uri` (database engines may carry a driver: postgresql+psycopg2://).
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_HTTP_SCHEMES = ("http", "https")
_KNOWN_KEYS = ("tracking_uri", "experiment", "enabled", "artifact_location", "model_name")
_URI_HELP = (
    "use sqlite:///relative/or/absolute.db (sqlite:////abs/path.db for an absolute path), "
    "postgresql://user@host/db, mysql://user@host/db, http(s)://host:port or file:/path/to/mlruns"
)


@dataclass(frozen=True)
class TrackingSettings:
    """Where and whether to log. Build it with :func:`tracking_settings`."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    experiment: str = DEFAULT_EXPERIMENT
    enabled: bool = True
    artifact_location: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Settings


def tracking_settings(params: Mapping[str, Any]) -> TrackingSettings:
    """Read and validate the ``mlflow`` section of ``params`` (the whole params.yaml mapping).

    A missing section means the defaults. Relative sqlite paths are made absolute against the current
    working directory, so the settings stay valid if the process changes directory later.
    """
    from qualitune.config import checked_section

    raw = checked_section(params, SECTION, _KNOWN_KEYS)

    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise QualituneError(f"{SECTION}.enabled must be true or false, got {enabled!r}")
    experiment = raw.get("experiment", DEFAULT_EXPERIMENT)
    if not isinstance(experiment, str) or not experiment.strip():
        raise QualituneError(f"{SECTION}.experiment must be a non-empty string, got {experiment!r}")
    artifact_location = raw.get("artifact_location")
    if artifact_location is not None:
        if not isinstance(artifact_location, str) or not artifact_location.strip():
            raise QualituneError(
                f"{SECTION}.artifact_location must be a path or URI, got {artifact_location!r}"
            )
        if not urlsplit(artifact_location).scheme or _looks_like_windows_path(artifact_location):
            artifact_location = os.path.abspath(artifact_location)

    uri = _normalise_tracking_uri(raw.get("tracking_uri", DEFAULT_TRACKING_URI))
    return TrackingSettings(
        tracking_uri=uri, experiment=experiment, enabled=enabled, artifact_location=artifact_location
    )


def _looks_like_windows_path(value: str) -> bool:
    return len(value) > 2 and value[1] == ":" and value[0].isalpha() and value[2] in "\\/"


def _normalise_tracking_uri(uri: Any) -> str:
    key = f"{SECTION}.tracking_uri"
    if not isinstance(uri, str) or not uri.strip():
        raise QualituneError(f"{key} must be a non-empty URI string, got {uri!r}; {_URI_HELP}")
    uri = uri.strip()
    scheme, sep, rest = uri.partition(":")
    base = scheme.lower().split("+", 1)[0]
    if not sep or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        raise QualituneError(f"{key} {uri!r} has no URI scheme; {_URI_HELP}")

    if base == "sqlite":
        if not rest.startswith("///") or len(rest) == 3:
            raise QualituneError(
                f"{key} {uri!r} is not a valid sqlite URI (it needs three slashes and a file path); {_URI_HELP}"
            )
        path, qmark, query = rest[3:].partition("?")
        if path != ":memory:" and not os.path.isabs(path):
            path = os.path.abspath(path)
        return f"{scheme}:///{path}{qmark}{query}"
    if base in _DB_SCHEMES:
        if not rest.startswith("//") or len(rest) == 2:
            raise QualituneError(f"{key} {uri!r} is not a valid database URI; {_URI_HELP}")
        return uri
    if base in _HTTP_SCHEMES:
        if not urlsplit(uri).netloc:
            raise QualituneError(f"{key} {uri!r} has no host; {_URI_HELP}")
        return uri
    if base == "file":
        if not rest:
            raise QualituneError(f"{key} {uri!r} has no path; {_URI_HELP}")
        return uri
    raise QualituneError(f"{key} {uri!r} uses unsupported scheme {scheme!r}; {_URI_HELP}")


# ---------------------------------------------------------------------------------------------------------
# Parameters


def _truncate(value: str, key: str) -> str:
    if len(value) <= MAX_PARAM_VAL_LENGTH:
        return value
    marker = f"...[truncated, {len(value)} chars]"
    logger.warning(
        "param %r is %d characters, over MLflow's limit of %d: truncated with marker %r",
        key,
        len(value),
        MAX_PARAM_VAL_LENGTH,
        marker,
    )
    return value[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return json.dumps(items, default=str, ensure_ascii=False)
    if isinstance(value, Mapping):  # only empty mappings reach here
        return json.dumps(dict(value), default=str, ensure_ascii=False)
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings into ``"a.b.c"`` keys with string values, ready for MLflow.

    Lists, tuples and sets are rendered as JSON; empty mappings as ``{}``; everything else with ``str``.
    Values longer than MLflow's limit (:data:`MAX_PARAM_VAL_LENGTH`) are cut to exactly the limit and
    end in ``...[truncated, N chars]``. Two inputs that flatten to the same key raise ``ValueError``.
    """
    out: dict[str, str] = {}

    def walk(node: Mapping[str, Any], pre: str) -> None:
        for k, v in node.items():
            key = f"{pre}.{k}" if pre else str(k)
            if isinstance(v, Mapping) and v:
                walk(v, key)
                continue
            if key in out:
                raise QualituneError(f"parameter key {key!r} occurs twice after flattening")
            out[key] = _truncate(_render(v), key)

    walk(d, prefix)
    return out


def _flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten_metrics(v, key))
            continue
        if isinstance(v, (str, bytes)) or v is None:
            raise TypeError(f"metric {key!r} must be a number, got {v!r}")
        try:
            value = float(v)
        except (TypeError, ValueError) as e:
            raise TypeError(f"metric {key!r} must be a number, got {type(v).__name__}: {v!r}") from e
        if not math.isfinite(value):
            logger.warning("metric %r is %s; logging it anyway", key, value)
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------------
# MLflow plumbing


def import_mlflow() -> Any:
    """Import MLflow with telemetry off and its database-migration chatter at WARNING."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    already = "mlflow" in sys.modules
    import mlflow

    if already:
        # MLflow decides on telemetry at import time; if someone imported it before us, drop the client
        # now (set_telemetry_client re-reads the environment and leaves None when telemetry is disabled).
        try:
            from mlflow.telemetry import set_telemetry_client
            from mlflow.telemetry.client import get_telemetry_client

            if get_telemetry_client() is not None:
                set_telemetry_client()
        except Exception:  # pragma: no cover - private API moved; telemetry is best-effort anyway
            pass
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "alembic"):
        lg = logging.getLogger(name)
        if lg.level == logging.NOTSET:
            lg.setLevel(logging.WARNING)
    return mlflow


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """No download progress bars (unless the user asked for them) and no advice to add type hints or an
    input example (the signature is explicit; an example would load the model once more at log time)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(key)
    if previous is None:
        os.environ[key] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*type hints to the `predict` method")
            warnings.filterwarnings("ignore", message=r"(?s).*input example was not provided")
            yield
    finally:
        if previous is None:
            os.environ.pop(key, None)


@dataclass(frozen=True)
class _RunContext:
    client: MlflowClient
    run_id: str


# The stack of runs opened by `start_run` in this context; `None` entries are disabled runs.
_RUNS: contextvars.ContextVar[tuple[_RunContext | None, ...]] = contextvars.ContextVar(
    "qualitune_tracking_runs", default=()
)


@contextmanager
def use_tracking_uri(mlflow: Any, uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri``; restore both the global URI and MLFLOW_TRACKING_URI after."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = getattr(tracking_utils, "_tracking_uri", None)
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def _experiment_id(client: MlflowClient, settings: TrackingSettings) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        try:
            return client.create_experiment(settings.experiment, artifact_location=settings.artifact_location)
        except MlflowException:
            exp = client.get_experiment_by_name(settings.experiment)  # created concurrently
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise QualituneError(
            f"MLflow experiment {settings.experiment!r} is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set "
            f"{SECTION}.experiment to another name"
        )
    return exp.experiment_id


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def provenance_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """``git_commit``/``git_dirty`` (when ``cwd`` is in a git repo with a commit) and ``dvc_lock_md5``."""
    cwd = Path.cwd() if cwd is None else Path(cwd)
    tags: dict[str, str] = {}
    head = _git("-C", str(cwd), "rev-parse", "--verify", "HEAD")
    if head and head.strip():
        tags["git_commit"] = head.strip()
        status = _git("-C", str(cwd), "status", "--porcelain")
        if status is not None:
            tags["git_dirty"] = "true" if status.strip() else "false"
    lock = cwd / "dvc.lock"
    if lock.is_file():
        tags["dvc_lock_md5"] = hashlib.md5(lock.read_bytes()).hexdigest()
    return tags


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _current() -> _RunContext | None:
    """The run the helpers log to; ``None`` inside a disabled `start_run`."""
    stack = _RUNS.get()
    if stack:
        return stack[-1]
    if "mlflow" in sys.modules:  # a run opened directly with mlflow.start_run (e.g. by a library callback)
        mlflow = import_mlflow()
        run = mlflow.active_run()
        if run is not None:
            return _RunContext(mlflow.MlflowClient(), run.info.run_id)
    raise RuntimeError("no active run: call the qualitune.tracking log helpers inside `with start_run(...)`")


# ---------------------------------------------------------------------------------------------------------
# Public API


@contextmanager
def start_run(
    settings: TrackingSettings,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    nested: bool = False,
) -> Iterator[ActiveRun | None]:
    """Open an MLflow run; yield it (``None`` when tracking is disabled).

    Creates the experiment if needed, tags the run with :func:`provenance_tags` plus ``tags`` (which win
    on conflicts), logs the flattened ``params`` and ends the run FINISHED, or FAILED when the block
    raises (the exception propagates). The previous tracking URI is restored afterwards.
    """
    if not settings.enabled:
        token = _RUNS.set((*_RUNS.get(), None))
        try:
            yield None
        finally:
            _RUNS.reset(token)
        return

    mlflow = import_mlflow()
    scheme, _, rest = settings.tracking_uri.partition(":")
    if scheme.lower().split("+", 1)[0] == "sqlite":  # sqlite cannot create the db's folder itself
        db_path = rest[3:].partition("?")[0]
        if db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    experiment_id = _experiment_id(client, settings)
    run_tags = {**provenance_tags(), **{str(k): str(v) for k, v in (tags or {}).items()}}
    flat = flatten_params(params) if params else {}

    with use_tracking_uri(mlflow, settings.tracking_uri):
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested, tags=run_tags)
        ctx = _RunContext(client, run.info.run_id)
        token = _RUNS.set((*_RUNS.get(), ctx))
        try:
            _log_flat_params(ctx, flat)
            yield run
        except BaseException:
            # The block's own error is the one to report: when the tracking server is what failed,
            # marking the run FAILED fails too, and that second error must not replace the first.
            try:
                mlflow.end_run("FAILED")
            except Exception as exc:
                logger.warning(
                    "could not mark MLflow run %s as FAILED at %s (%s: %s)",
                    run.info.run_id,
                    settings.tracking_uri,
                    type(exc).__name__,
                    exc,
                )
            raise
        else:
            mlflow.end_run("FINISHED")
        finally:
            _RUNS.reset(token)


def _log_flat_params(ctx: _RunContext, flat: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    entries = [Param(k, v) for k, v in flat.items()]
    for batch in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
        ctx.client.log_batch(ctx.run_id, params=batch, synchronous=True)


def log_params(params: Mapping[str, Any]) -> None:
    """Log (nested) params to the current run, flattened like :func:`flatten_params`."""
    ctx = _current()
    if ctx is not None:
        _log_flat_params(ctx, flatten_params(params))


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log metrics to the current run; nested mappings become ``"a.b"`` names.

    Non-numeric values raise ``TypeError``; NaN and infinities are logged (MLflow stores them) with a
    warning.
    """
    ctx = _current()
    if ctx is None:
        return
    from mlflow.entities import Metric

    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError(f"step must be an int or None, got {step!r}")
    flat = _flatten_metrics(metrics)
    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, step or 0) for k, v in flat.items()]
    for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
        ctx.client.log_batch(ctx.run_id, metrics=batch, synchronous=True)


def log_metric_history(rows: list[tuple[int, Mapping[str, Any]]]) -> None:
    """Log many steps' metrics in one batched call (per-step calls cost a database round trip each,
    which on sqlite is slower than a tiny model's training step)."""
    ctx = _current()
    if ctx is None or not rows:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(k, v, now, int(step)) for step, m in rows for k, v in _flatten_metrics(m).items()]
    for batch in _chunks(entries, MAX_METRICS_PER_BATCH):
        ctx.client.log_batch(ctx.run_id, metrics=batch, synchronous=True)


class MetricBuffer:
    """Collects per-step metrics and flushes them every `every` steps (and on `flush()`).

    A flush during training that fails (the tracking server is down or full) does not stop the
    training: the rows stay in the buffer, a warning says so once, and the next flush sends them
    again. The explicit `flush()` at the end raises, so the caller reports the failure once its own
    outputs are safe on disk."""

    def __init__(self, every: int = 50):
        self.every = max(1, int(every))
        self.rows: list[tuple[int, Mapping[str, Any]]] = []
        self.failed: str | None = None  # the last failed flush's error

    def __call__(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.rows.append((step, dict(metrics)))
        if len(self.rows) >= self.every:
            try:
                self.flush()
            except Exception as exc:
                if self.failed is None:
                    logger.warning(
                        "logging step metrics to MLflow failed (%s: %s); training goes on, the %d rows are "
                        "kept and sent again at the next flush",
                        type(exc).__name__,
                        exc,
                        len(self.rows),
                    )
                self.failed = f"{type(exc).__name__}: {exc}"

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        try:
            log_metric_history(rows)
        except BaseException:
            self.rows = rows + self.rows
            raise
        self.failed = None


def log_artifacts(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file or a directory (its contents) to the current run, under ``artifact_path`` if given."""
    ctx = _current()
    if ctx is None:
        return
    p = Path(path)
    if p.is_dir():
        ctx.client.log_artifacts(ctx.run_id, str(p), artifact_path)
    elif p.is_file():
        ctx.client.log_artifact(ctx.run_id, str(p), artifact_path)
    else:
        raise FileNotFoundError(f"artifact to log not found: {p}")


__all__ = [
    "DEFAULT_EXPERIMENT",
    "DEFAULT_TRACKING_URI",
    "MAX_PARAM_VAL_LENGTH",
    "TrackingSettings",
    "flatten_params",
    "MetricBuffer",
    "log_artifacts",
    "log_metric_history",
    "log_metrics",
    "log_params",
    "provenance_tags",
    "start_run",
    "tracking_settings",
]
