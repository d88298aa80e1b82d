"""Where trained scorers live: registry references, downloads, and the local copies of both.

``models:/name@alias``, ``models:/name/version`` and ``runs:/RUN_ID/model`` all end as a local scorer
folder: :func:`download_scorer` / :func:`download_run_scorer` resolve the reference in the MLflow
registry (the tracking URI from the argument, ``MLFLOW_TRACKING_URI`` or the project's params.yaml),
download the ``scorer`` artifact of the pyfunc the ``register`` stage logged, check it is a scorer, and
keep it under :func:`cache_root` (immutable versions are downloaded once; aliases are resolved on every
call, because they move), under qualitune's one cache root (:func:`qualitune.cache.cache_dir`).

This module knows nothing of how a scorer is evaluated or promoted (:mod:`qualitune.gate`) or how a
scorer scores (:mod:`qualitune.scorer`); the folder format comes from :mod:`qualitune.scorer_folder`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from qualitune.cache import cache_dir
from qualitune.errors import QualituneError

log = logging.getLogger(__name__)

SCORER_ARTIFACT = "scorer"  # the pyfunc artifact holding the scorer folder (see qualitune.gate)
MODEL_CACHE_ENV = "QUALITUNE_MODEL_CACHE"  # registry downloads only (default: <cache_dir()>/models)
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of ``models:/name@alias`` or ``models:/name/version``."""
    m = _URI_RE.match(str(uri).strip())
    if not m:
        raise QualituneError(
            f"{uri!r} is not a registry reference; use models:/NAME@ALIAS (e.g. models:/qualitune@champion) "
            "or models:/NAME/VERSION"
        )
    return m["name"], m["alias"], m["version"]


def resolve_tracking_uri(cwd: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri`` of ``params.yaml`` in ``cwd``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env.strip():
        return env.strip()
    params_file = (Path.cwd() if cwd is None else Path(cwd)) / "params.yaml"
    if params_file.is_file():
        from qualitune.config import load_params
        from qualitune.tracking import tracking_settings

        settings = tracking_settings(load_params(params_file))
        uri = settings.tracking_uri
        if uri.startswith("sqlite:///"):
            db = uri[len("sqlite:///") :].partition("?")[0]
            if db != ":memory:" and not Path(db).is_file():
                raise QualituneError(
                    f"no MLflow database at {db} ({params_file}: mlflow.tracking_uri); register a model first "
                    "(`qualitune register` / `dvc repro register`) or set MLFLOW_TRACKING_URI"
                )
        return uri
    raise QualituneError(
        "no MLflow tracking URI to find the model registry: set MLFLOW_TRACKING_URI "
        "(e.g. export MLFLOW_TRACKING_URI=sqlite:////path/to/project/mlflow.db or http://host:5000) "
        "or run from the project folder, whose params.yaml names mlflow.tracking_uri"
    )


def cache_root() -> Path:
    """Where registry downloads are kept: ``$QUALITUNE_MODEL_CACHE``, else ``<cache_dir()>/models``."""
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else cache_dir() / "models"


def _registered_model(client, name: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        known = sorted(m.name for m in client.search_registered_models(max_results=50))
    except MlflowException:
        known = []
    raise QualituneError(
        f"no registered model {name!r} in the registry at {uri}; registered models: {known or 'none'} "
        "(register one with `qualitune register` or `dvc repro register`)"
    )


def _scorer_subpath(model_dir: Path) -> str:
    import yaml

    mlmodel = model_dir / "MLmodel"
    conf = yaml.safe_load(mlmodel.read_text()) if mlmodel.is_file() else {}
    art = (((conf or {}).get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
    entry = art.get(SCORER_ARTIFACT)
    if not isinstance(entry, Mapping) or not entry.get("path"):
        raise QualituneError(
            f"this model version is not a qualitune scorer (no {SCORER_ARTIFACT!r} artifact)"
        )
    return str(entry["path"])


def download_scorer(uri: str, *, tracking_uri: str | None = None) -> Path:
    """The local scorer folder of ``models:/name@alias`` or ``models:/name/version``.

    The tracking URI is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project's params.yaml
    (see :func:`resolve_tracking_uri`); the registry URI is ``MLFLOW_REGISTRY_URI`` or the same. A
    version is downloaded once into :func:`cache_root` and reused: aliases are resolved on every call
    (they move), versions are immutable.
    """
    from qualitune.tracking import import_mlflow

    name, alias, version = parse_model_uri(uri)
    tracking_uri = tracking_uri or resolve_tracking_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    rm = _registered_model(client, name, registry_uri)
    if alias is not None:
        aliases = dict(rm.aliases or {})
        if alias not in aliases:
            raise QualituneError(
                f"registered model {name!r} has no alias {alias!r}; aliases: "
                f"{ {k: f'v{v}' for k, v in sorted(aliases.items())} or 'none' } "
                f"(use models:/{name}/VERSION, or promote a version with `qualitune register`)"
            )
        version = str(aliases[alias])
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        try:
            known = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            known = []
        raise QualituneError(
            f"registered model {name!r} has no version {version}; versions: {known or 'none'}"
        ) from exc

    key = hashlib.sha256(
        "\n".join([registry_uri, name, str(mv.version), str(mv.creation_timestamp), str(mv.source)]).encode()
    ).hexdigest()[:16]
    safe_name = re.sub(r"[^\w.\-]", "_", name)
    target = cache_root() / safe_name / f"v{mv.version}-{key}"
    if target.is_dir():
        log.debug("registry cache hit: %s -> %s", uri, target)
        return target
    _fetch_scorer(
        f"models:/{name}/{mv.version}", target, tracking_uri=tracking_uri, registry_uri=registry_uri
    )
    log.info("downloaded %s (v%s) to %s", uri, mv.version, target)
    return target


def _fetch_scorer(artifact_uri: str, target: Path, *, tracking_uri: str, registry_uri: str) -> None:
    """Download an MLflow model and move its scorer artifact to ``target`` (staged, then renamed, so a
    killed download never leaves a half-written cache entry)."""
    from qualitune.scorer_folder import ScorerSpec
    from qualitune.tracking import import_mlflow, quiet_mlflow, use_tracking_uri

    mlflow = import_mlflow()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        # MLflow resolves a version's `models:/m-...` source through the global tracking URI, whatever
        # `tracking_uri` says: without this it reads (and creates) ./mlflow.db of the working folder
        with quiet_mlflow(), use_tracking_uri(mlflow, tracking_uri):
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=artifact_uri,
                    dst_path=str(staging),
                    tracking_uri=tracking_uri,
                    registry_uri=registry_uri,
                )
            )
        src = local / _scorer_subpath(local)
        ScorerSpec.read(src)
        try:
            src.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent download that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_RUNS_RE = re.compile(r"^runs:/(?P<run>[\w\-]+)/(?P<path>[^?#]+?)/?$")


def download_run_scorer(uri: str, *, tracking_uri: str | None = None) -> Path:
    """The local scorer folder of a model logged in a run: ``runs:/RUN_ID/model`` (the ``register`` run
    logs the pyfunc under ``model``), e.g. a version that was logged but never registered.

    A run's artifacts never change, so the download is cached in :func:`cache_root` under ``runs/``, keyed
    by the tracking URI and the reference. The tracking URI is found as for :func:`download_scorer`.
    """
    m = _RUNS_RE.match(str(uri).strip())
    if not m:
        raise QualituneError(
            f"{uri!r} is not a run reference; use runs:/RUN_ID/model (the register run's model)"
        )
    tracking_uri = tracking_uri or resolve_tracking_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    key = hashlib.sha256("\n".join([tracking_uri, m["run"], m["path"]]).encode()).hexdigest()[:16]
    target = cache_root() / "runs" / f"{m['run']}-{key}"
    if target.is_dir():
        log.debug("run cache hit: %s -> %s", uri, target)
        return target
    from qualitune.tracking import import_mlflow

    import_mlflow()
    from mlflow.exceptions import MlflowException

    try:
        _fetch_scorer(
            f"runs:/{m['run']}/{m['path']}", target, tracking_uri=tracking_uri, registry_uri=registry_uri
        )
    except MlflowException as exc:
        raise QualituneError(
            f"cannot download {uri} from {tracking_uri}: {exc.message} (is the run id right, and is the "
            "model logged under that name? the register stage logs it as runs:/RUN_ID/model)"
        ) from None
    log.info("downloaded %s to %s", uri, target)
    return target
