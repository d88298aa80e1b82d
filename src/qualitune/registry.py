"""The MLflow model registry: log a scorer as a pyfunc, register it, and gate its promotion.

Reads the ``register`` section of ``params.yaml`` and ``mlflow.model_name``::

    register:
      min_final: 0.0      # a challenger needs val final = (SRCC + PLCC) / 2 >= this to become champion
      margin: 0.0         # ... and final >= champion's final + margin, both scored now on the same val split
      mode: expected      # scoring mode of the comparison (expected | greedy)
      batch_size: 8
      report: reports/register.json

:func:`log_and_register` logs the scorer folder as an MLflow "models from code" pyfunc
(``qualitune/pyfunc_model.py``), registers a new version with its validation metrics, git/DVC
provenance, lineage and params as version tags, points the ``challenger`` alias at it, scores the
challenger and the current ``champion`` on the same validation rows, and moves ``champion`` only when
:func:`decide` says so. :func:`download_scorer` turns ``models:/name@alias`` or ``models:/name/version``
into a local scorer folder (cached per version), which is how ``Scorer.load`` and ``qualitune score
--model models:/...`` reach the registry.

:func:`decode_media` and :func:`score_encoded` turn base64 file contents (what a client sends) into
scores without any server-side path; the pyfunc and the serving layer share them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualitune.media import MediaError

if TYPE_CHECKING:
    import pandas as pd

    from qualitune.scorer import Scorer
    from qualitune.tracking import TrackingSettings

log = logging.getLogger(__name__)

SECTION = "register"
DEFAULT_MODEL_NAME = "qualitune"
CHAMPION = "champion"
CHALLENGER = "challenger"
SCORER_ARTIFACT = "scorer"
PYFUNC_NAME = "model"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CACHE_ENV = "QUALITUNE_MODEL_CACHE"
_KNOWN_KEYS = ("min_final", "margin", "mode", "batch_size", "report")
_MODES = ("expected", "greedy")
# What the pyfunc imports at serving time (pinned to the versions installed here; no inference, which
# would load the model and may query package indexes). qualitune itself must be installed where it runs.
_SERVING_PACKAGES = (
    "qualitune",
    "mlflow",
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "tiktoken",
    "numpy",
    "pandas",
    "pillow",
    "av",
    "pyyaml",
)
_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


# ---------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class RegisterSettings:
    """The promotion gate and where its report goes. Build it with :meth:`from_params`."""

    model_name: str = DEFAULT_MODEL_NAME
    min_final: float = 0.0
    margin: float = 0.0
    mode: str = "expected"
    batch_size: int = 8
    report: str = "reports/register.json"
    feature_store: str | None = None  # `model.feature_cache`: the compact encoder's features on disk

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ValueError(f"mlflow.model_name must be a non-empty string, got {self.model_name!r}")
        if any(c in self.model_name for c in "/@:") or self.model_name != self.model_name.strip():
            raise ValueError(
                f"mlflow.model_name {self.model_name!r} may not contain '/', '@', ':' or surrounding spaces "
                "(it becomes part of models:/name@alias)"
            )
        for key in ("min_final", "margin"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{SECTION}.{key} must be a finite number, got {value!r}")
        if self.margin < 0:
            raise ValueError(f"{SECTION}.margin must be >= 0, got {self.margin!r}")
        if self.mode not in _MODES:
            raise ValueError(f"{SECTION}.mode must be one of {list(_MODES)}, got {self.mode!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"{SECTION}.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.report, str) or not self.report.strip():
            raise ValueError(f"{SECTION}.report must be a file path, got {self.report!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RegisterSettings:
        """Read ``register`` (optional: defaults) and ``mlflow.model_name`` from the params mapping."""
        from qualitune.config import checked_section

        raw = checked_section(params, SECTION, _KNOWN_KEYS)
        mlf = params.get("mlflow") or {}
        name = mlf.get("model_name", DEFAULT_MODEL_NAME) if isinstance(mlf, Mapping) else DEFAULT_MODEL_NAME
        kwargs = {k: raw[k] for k in _KNOWN_KEYS if k in raw and raw[k] is not None}
        for key in ("min_final", "margin"):
            if isinstance(kwargs.get(key), int) and not isinstance(kwargs[key], bool):
                kwargs[key] = float(kwargs[key])
        model = params.get("model") or {}
        store = model.get("feature_cache") if isinstance(model, Mapping) else None
        return cls(model_name=name, feature_store=str(store) if store else None, **kwargs)


def registry_tracking_settings(params: Mapping[str, Any]) -> TrackingSettings:
    """``tracking_settings`` of the params, tolerating ``mlflow.model_name`` (a registry-only key)."""
    from qualitune.tracking import tracking_settings

    mlf = params.get("mlflow")
    if isinstance(mlf, Mapping) and "model_name" in mlf:
        params = {**params, "mlflow": {k: v for k, v in mlf.items() if k != "model_name"}}
    return tracking_settings(params)


# ---------------------------------------------------------------------------------------------------------
# The gate


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def decide(
    challenger_final: float | None, champion_final: float | None, min_final: float, margin: float
) -> tuple[bool, str]:
    """Whether a challenger becomes champion, and why (a sentence with the numbers).

    Promote when the challenger's final is a number, is >= ``min_final``, and either there is no
    champion (``champion_final is None``) or it is >= ``champion_final + margin``. A NaN/None challenger
    final (constant or missing predictions) never passes. A champion whose own final is NaN has no
    valid score, so any challenger that clears ``min_final`` replaces it.
    """
    if not _finite(challenger_final):
        return False, (
            f"challenger has no valid final ({challenger_final}): its predictions are constant or missing, "
            "so it cannot be promoted"
        )
    assert challenger_final is not None
    if challenger_final < min_final:
        return False, f"challenger final {challenger_final:.4f} is below the minimum {min_final:.4f}"
    if champion_final is None:
        return True, (
            f"no champion yet and challenger final {challenger_final:.4f} >= minimum {min_final:.4f}"
        )
    if not _finite(champion_final):
        return True, (
            f"challenger final {challenger_final:.4f} >= minimum {min_final:.4f} and the champion has no "
            f"valid final ({champion_final})"
        )
    bar = champion_final + margin
    if challenger_final >= bar:
        return True, (
            f"challenger final {challenger_final:.4f} >= champion final {champion_final:.4f} "
            f"+ margin {margin:.4f} = {bar:.4f}"
        )
    return False, (
        f"challenger final {challenger_final:.4f} < champion final {champion_final:.4f} "
        f"+ margin {margin:.4f} = {bar:.4f}"
    )


@dataclass
class Decision:
    """The outcome of one registration: written as JSON to ``register.report``."""

    model_name: str
    promoted: bool
    reason: str
    mode: str
    challenger_version: str
    challenger_final: float | None
    champion_version: str | None  # the champion before the decision (None: there was none)
    champion_final: float | None
    champion_after: str | None  # the champion once the decision is applied
    min_final: float
    margin: float
    run_id: str | None = None
    model_uri: str | None = None
    challenger_metrics: dict[str, Any] = field(default_factory=dict)
    champion_metrics: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p


def _json_safe(obj: Any) -> Any:
    """NaN/inf become None (strict JSON); numpy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _tag_key(key: str) -> str:
    """A valid MLflow tag key: allowed characters only, a normalised relative path, <= 250 chars."""
    key = re.sub(r"[^/\w.\- ]", "_", key)
    key = posixpath.normpath(key).lstrip("/")
    while key.startswith(".."):
        key = key[1:]
    return key[:250] or "_"


def lineage_tags(cwd: str | Path | None = None) -> dict[str, str]:
    """``lineage.<stage>/<out path>`` -> md5 of every output recorded in ``dvc.lock`` (if there is one)."""
    import yaml

    lock = Path.cwd() / "dvc.lock" if cwd is None else Path(cwd) / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        data = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError as exc:
        log.warning("cannot read %s for lineage tags: %s", lock, exc)
        return {}
    tags: dict[str, str] = {}
    stages = data.get("stages") if isinstance(data, Mapping) else None
    for stage, body in (stages or {}).items():
        if not isinstance(body, Mapping):
            continue
        for out in body.get("outs") or []:
            if isinstance(out, Mapping) and out.get("path") and out.get("md5"):
                tags[_tag_key(f"lineage.{stage}/{out['path']}")] = str(out["md5"])
    return tags


def _version_tags(
    metrics: Mapping[str, Any], mode: str, params: Mapping[str, Any] | None, scorer_dir: Path
) -> dict[str, str]:
    from qualitune.tracking import flatten_params, provenance_tags

    tags = {"val.mode": mode, "scorer.source": str(scorer_dir)}
    tags.update({f"val.{k}": repr(v) for k, v in _numeric(metrics).items()})
    tags.update(provenance_tags())
    tags.update(lineage_tags())
    if params:
        tags.update({_tag_key(f"params.{k}"): v for k, v in flatten_params(params).items()})
    return tags


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in _SERVING_PACKAGES:
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+', 1)[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "image")]),
        params=ParamSchema(
            [ParamSpec("mode", DataType.string, "expected"), ParamSpec("batch_size", DataType.long, 8)]
        ),
    )


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
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


def _device() -> str | None:
    import torch

    return "cuda" if torch.cuda.is_available() else None


def _evaluate(scorer: Scorer, val_df: pd.DataFrame, settings: RegisterSettings) -> dict[str, Any]:
    from qualitune.evaluate import evaluate_split

    metrics, _ = evaluate_split(scorer, val_df, modes=(settings.mode,), batch_size=settings.batch_size)
    return metrics[settings.mode]


def _evaluate_dir(directory: str | Path, val_df: pd.DataFrame, settings: RegisterSettings) -> dict[str, Any]:
    import gc

    from qualitune.scorer import Scorer

    scorer = Scorer.load(directory, device=_device(), feature_store=settings.feature_store)
    try:
        return _evaluate(scorer, val_df, settings)
    finally:
        del scorer
        gc.collect()


def log_and_register(
    scorer_dir: str | Path,
    settings: RegisterSettings,
    tracking: TrackingSettings,
    *,
    val_df: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
) -> Decision:
    """Log ``scorer_dir`` as a pyfunc, register it as a new version (alias ``challenger``), and promote
    it to ``champion`` if it beats the current champion on ``val_df`` (see :func:`decide`).

    Both are scored now, with the same mode and rows, so a change of validation data or of the
    scoring code never compares numbers measured differently. Writes the decision to
    ``settings.report`` and logs it (metrics, tags, the report) to the MLflow run ``register``.
    """
    from qualitune.scorer import ScorerSpec
    from qualitune.tracking import _import_mlflow, log_artifacts, log_metrics, start_run

    scorer_dir = Path(scorer_dir)
    ScorerSpec.read(scorer_dir)  # a clear error before anything is logged
    if not tracking.enabled:
        raise ValueError("registering a model needs MLflow: set mlflow.enabled: true in params.yaml")
    if len(val_df) == 0:
        raise ValueError("no validation rows to compare challenger and champion on")
    name = settings.model_name

    challenger_metrics = _evaluate_dir(scorer_dir, val_df, settings)
    ch_final = challenger_metrics.get("final")
    tags = _version_tags(challenger_metrics, settings.mode, params, scorer_dir)

    mlflow = _import_mlflow()
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri)
    with (
        _quiet_mlflow(),
        start_run(tracking, "register", params=params, tags={"stage": "register", "model_name": name}) as run,
    ):
        run_id = run.info.run_id
        info = mlflow.pyfunc.log_model(
            name=PYFUNC_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={SCORER_ARTIFACT: str(scorer_dir.resolve())},
            pip_requirements=_pip_requirements(),
            signature=_signature(),
        )
        mv = mlflow.register_model(info.model_uri, name, tags=tags)
        version = str(mv.version)
        client.set_registered_model_alias(name, CHALLENGER, version)

        champion_version = client.get_registered_model(name).aliases.get(CHAMPION)
        champion_metrics = None
        champion_final = None
        if champion_version is not None:
            champion_version = str(champion_version)
            champ_dir = download_scorer(
                f"models:/{name}/{champion_version}", tracking_uri=tracking.tracking_uri
            )
            champion_metrics = _evaluate_dir(champ_dir, val_df, settings)
            champion_final = champion_metrics.get("final")
            champion_final = math.nan if champion_final is None else float(champion_final)

        promoted, why = decide(
            None if ch_final is None else float(ch_final), champion_final, settings.min_final, settings.margin
        )
        who = f"challenger v{version}" + (f" vs champion v{champion_version}" if champion_version else "")
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
            reason = f"{who} ({settings.mode} mode, {len(val_df)} val items): {why}; v{version} promoted to champion"
        else:
            stays = (
                f"champion v{champion_version} (final {champion_final:.4f}) unchanged"
                if champion_version
                else "no champion set"
            )
            reason = f"{who} ({settings.mode} mode, {len(val_df)} val items): {why}; not promoted, {stays}"
        decision = Decision(
            model_name=name,
            promoted=promoted,
            reason=reason,
            mode=settings.mode,
            challenger_version=version,
            challenger_final=None if ch_final is None else float(ch_final),
            champion_version=champion_version,
            champion_final=champion_final,
            champion_after=version if promoted else champion_version,
            min_final=settings.min_final,
            margin=settings.margin,
            run_id=run_id,
            model_uri=f"models:/{name}/{version}",
            challenger_metrics=challenger_metrics,
            champion_metrics=champion_metrics,
        )
        gate = {
            "gate.decision": "promoted" if promoted else "rejected",
            "gate.reason": reason,
            "gate.champion_version": champion_version or "",
            "gate.champion_final": repr(champion_final),
            "gate.min_final": repr(settings.min_final),
            "gate.margin": repr(settings.margin),
        }
        for k, v in gate.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_tag(run_id, "registered_version", version)
        client.set_tag(run_id, "promoted", str(promoted).lower())
        log_metrics(
            {
                "challenger": _numeric(challenger_metrics),
                **({"champion": _numeric(champion_metrics)} if champion_metrics else {}),
                "promoted": float(promoted),
            }
        )
        report = decision.write(settings.report)
        log_artifacts(report)
    log.debug("%s", reason)  # callers (the register stage, the retraining flow) report the decision
    return decision


# ---------------------------------------------------------------------------------------------------------
# Downloading from the registry


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of ``models:/name@alias`` or ``models:/name/version``."""
    m = _URI_RE.match(str(uri).strip())
    if not m:
        raise ValueError(
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

        settings = registry_tracking_settings(load_params(params_file))
        uri = settings.tracking_uri
        if uri.startswith("sqlite:///"):
            db = uri[len("sqlite:///") :].partition("?")[0]
            if db != ":memory:" and not Path(db).is_file():
                raise ValueError(
                    f"no MLflow database at {db} ({params_file}: mlflow.tracking_uri); register a model first "
                    "(`qualitune register` / `dvc repro register`) or set MLFLOW_TRACKING_URI"
                )
        return uri
    raise ValueError(
        "no MLflow tracking URI to find the model registry: set MLFLOW_TRACKING_URI "
        "(e.g. export MLFLOW_TRACKING_URI=sqlite:////path/to/project/mlflow.db or http://host:5000) "
        "or run from the project folder, whose params.yaml names mlflow.tracking_uri"
    )


def cache_root() -> Path:
    """Where registry downloads are kept: ``$QUALITUNE_MODEL_CACHE`` or ``~/.cache/qualitune/models``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qualitune" / "models"


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
    raise ValueError(
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
        raise ValueError(f"this model version is not a qualitune scorer (no {SCORER_ARTIFACT!r} artifact)")
    return str(entry["path"])


def download_scorer(uri: str, *, tracking_uri: str | None = None) -> Path:
    """The local scorer folder of ``models:/name@alias`` or ``models:/name/version``.

    The tracking URI is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project's params.yaml
    (see :func:`resolve_tracking_uri`); the registry URI is ``MLFLOW_REGISTRY_URI`` or the same. A
    version is downloaded once into :func:`cache_root` and reused: aliases are resolved on every call
    (they move), versions are immutable.
    """
    from qualitune.tracking import _import_mlflow

    name, alias, version = parse_model_uri(uri)
    tracking_uri = tracking_uri or resolve_tracking_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    mlflow = _import_mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    rm = _registered_model(client, name, registry_uri)
    if alias is not None:
        aliases = dict(rm.aliases or {})
        if alias not in aliases:
            raise ValueError(
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
        raise ValueError(
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
    from qualitune.scorer import ScorerSpec
    from qualitune.tracking import _import_mlflow, _use_tracking_uri

    mlflow = _import_mlflow()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        # MLflow resolves a version's `models:/m-...` source through the global tracking URI, whatever
        # `tracking_uri` says: without this it reads (and creates) ./mlflow.db of the working folder
        with _quiet_mlflow(), _use_tracking_uri(mlflow, tracking_uri):
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
        raise ValueError(f"{uri!r} is not a run reference; use runs:/RUN_ID/model (the register run's model)")
    tracking_uri = tracking_uri or resolve_tracking_uri()
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri
    key = hashlib.sha256("\n".join([tracking_uri, m["run"], m["path"]]).encode()).hexdigest()[:16]
    target = cache_root() / "runs" / f"{m['run']}-{key}"
    if target.is_dir():
        log.debug("run cache hit: %s -> %s", uri, target)
        return target
    from qualitune.tracking import _import_mlflow

    _import_mlflow()
    from mlflow.exceptions import MlflowException

    try:
        _fetch_scorer(
            f"runs:/{m['run']}/{m['path']}", target, tracking_uri=tracking_uri, registry_uri=registry_uri
        )
    except MlflowException as exc:
        raise ValueError(
            f"cannot download {uri} from {tracking_uri}: {exc.message} (is the run id right, and is the "
            "model logged under that name? the register stage logs it as runs:/RUN_ID/model)"
        ) from None
    log.info("downloaded %s to %s", uri, target)
    return target


# ---------------------------------------------------------------------------------------------------------
# Media sent as bytes (pyfunc and serving)


def decode_base64(value: Any) -> bytes:
    """File bytes from a base64 string (standard or URL-safe alphabet, optional ``data:...;base64,``
    prefix, whitespace and missing padding tolerated). Raw ``bytes`` pass through. Raises MediaError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise MediaError("no image given (empty value)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            header, sep, text = text.partition(",")
            if not sep or not header.endswith(";base64"):
                raise MediaError("data URL is not base64-encoded (expected data:<type>;base64,<data>)")
        text = "".join(text.split())
        if not text:
            raise MediaError("empty image string")
        text += "=" * (-len(text) % 4)
        altchars = b"-_" if ("-" in text or "_" in text) else None
        try:
            data = base64.b64decode(text, altchars=altchars, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"not valid base64 ({exc})") from exc
    else:
        raise MediaError(f"expected a base64-encoded file as a string, got {type(value).__name__}")
    if not data:
        raise MediaError("empty file")
    return data


def sniff_video_suffix(data: bytes) -> str | None:
    """The file suffix of a video container recognised from its first bytes, or None."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return ".mov" if data[8:12] == b"qt  " else ".mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return ".webm" if b"webm" in data[:64] else ".mkv"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ".avi"
    if data[:3] == b"FLV":
        return ".flv"
    if data[:4] == b"\x00\x00\x01\xba":
        return ".mpg"
    return None


def decode_image_bytes(data: bytes) -> Any:
    """A fully decoded 8-bit RGB PIL image, or MediaError (never a half-decoded image)."""
    from PIL import Image

    from qualitune.media import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                rgb = to_rgb(img)
    except Exception as exc:
        raise MediaError(
            "cannot decode: not an image PIL reads, nor an MP4/MOV, Matroska/WebM, AVI, FLV or MPEG video "
            f"({type(exc).__name__}: {re.sub(r'<_io.BytesIO object at 0x[0-9a-f]+>', 'the data', str(exc))})"
        ) from exc
    if rgb.width < 1 or rgb.height < 1:
        raise MediaError(f"image has no pixels ({rgb.width}x{rgb.height})")
    return rgb


def decode_media(data: bytes, *, n_frames: int = 2) -> tuple[str, Any]:
    """``("image", PIL image)`` or ``("video", [n_frames PIL frames])`` from a file's bytes.

    Videos are recognised by their container signature and read through a private temporary file
    (PyAV needs one), removed at once; error messages never show its path."""
    from qualitune.media import load_media

    suffix = sniff_video_suffix(data)
    if suffix is None:
        return "image", decode_image_bytes(data)
    fd, name = tempfile.mkstemp(suffix=suffix, prefix="qualitune-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            frames = load_media(name, n_frames=n_frames)
        except MediaError as exc:
            raise MediaError(str(exc).replace(name, f"{suffix[1:]} video")) from None
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass
    return "video", list(frames)


def score_encoded(
    scorer: Scorer, values: Iterable[Any], *, mode: str = "expected", batch_size: int = 8
) -> list[dict[str, Any]]:
    """Score base64-encoded files: one dict per value, in order, with ``score``, ``score_1_5``,
    ``levels``, ``mode`` and ``error`` (None when scored). A value that does not decode gets
    ``score: None`` and the reason; the others are still scored, in batches of ``batch_size``."""
    from qualitune.vlm.answers import ParseReport

    if mode not in _MODES:
        raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    values = list(values)
    results: list[dict[str, Any]] = [
        {"score": None, "score_1_5": None, "levels": None, "mode": mode, "error": None} for _ in values
    ]
    ok: list[tuple[int, Any, str]] = []
    for i, v in enumerate(values):
        try:
            kind, item = decode_media(decode_base64(v), n_frames=scorer.spec.n_frames)
        except MediaError as exc:
            results[i]["error"] = str(exc)
            continue
        results[i]["media"] = kind
        ok.append((i, item, kind))
    scorer.score_into(results, ok, mode=mode, batch_size=batch_size, report=ParseReport())
    return results


def encode_file(path: str | Path) -> str:
    """Base64 text of a file: what a client puts in the ``image`` column."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def input_values(model_input: Any) -> Sequence[Any]:
    """The ``image`` values of a pyfunc input: a DataFrame/dict with an ``image`` column, a list, a
    Series or a single string."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise ValueError(
                f"input needs an 'image' column (base64 file bytes); got {list(model_input.columns)}"
            )
        return model_input["image"].tolist()
    if isinstance(model_input, Mapping):
        if "image" not in model_input:
            raise ValueError(f"input needs an 'image' key (base64 file bytes); got {sorted(model_input)}")
        col = model_input["image"]
        return [col] if isinstance(col, (str, bytes)) else list(col)
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, (str, bytes)):
        return [model_input]
    return list(model_input)


__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Decision",
    "RegisterSettings",
    "cache_root",
    "decide",
    "decode_base64",
    "decode_image_bytes",
    "decode_media",
    "download_run_scorer",
    "download_scorer",
    "encode_file",
    "input_values",
    "lineage_tags",
    "log_and_register",
    "parse_model_uri",
    "registry_tracking_settings",
    "resolve_tracking_uri",
    "score_encoded",
    "sniff_video_suffix",
]
