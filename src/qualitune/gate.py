"""The promotion gate: log a scorer as an MLflow pyfunc, register it, and promote it only when it wins.

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
:func:`decide` says so. Reading a version back is :mod:`qualitune.store`'s job; what the pyfunc does
with the bytes a client sends is :mod:`qualitune.codec`'s.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualitune.codec import MODES as _MODES
from qualitune.errors import QualituneError
from qualitune.jsonable import json_safe, numeric_only
from qualitune.sections import ModelSettings
from qualitune.store import SCORER_ARTIFACT, download_scorer
from qualitune.tracking import quiet_mlflow

if TYPE_CHECKING:
    import pandas as pd

    from qualitune.scorer import Scorer
    from qualitune.tracking import TrackingSettings

log = logging.getLogger(__name__)

SECTION = "register"
DEFAULT_MODEL_NAME = "qualitune"
CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_NAME = "model"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
_KNOWN_KEYS = ("min_final", "margin", "mode", "batch_size", "report")
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
            raise QualituneError(f"mlflow.model_name must be a non-empty string, got {self.model_name!r}")
        if any(c in self.model_name for c in "/@:") or self.model_name != self.model_name.strip():
            raise QualituneError(
                f"mlflow.model_name {self.model_name!r} may not contain '/', '@', ':' or surrounding spaces "
                "(it becomes part of models:/name@alias)"
            )
        for key in ("min_final", "margin"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise QualituneError(f"{SECTION}.{key} must be a finite number, got {value!r}")
        if self.margin < 0:
            raise QualituneError(f"{SECTION}.margin must be >= 0, got {self.margin!r}")
        if self.mode not in _MODES:
            raise QualituneError(f"{SECTION}.mode must be one of {list(_MODES)}, got {self.mode!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise QualituneError(f"{SECTION}.batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not isinstance(self.report, str) or not self.report.strip():
            raise QualituneError(f"{SECTION}.report must be a file path, got {self.report!r}")

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
        store = ModelSettings.value(params, "feature_cache")
        return cls(model_name=name, feature_store=store, **kwargs)


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
        return json_safe(asdict(self))

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return p


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
    tags.update({f"val.{k}": repr(v) for k, v in numeric_only(metrics).items()})
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
    from qualitune.tracking import import_mlflow, log_artifacts, log_metrics, start_run

    scorer_dir = Path(scorer_dir)
    ScorerSpec.read(scorer_dir)  # a clear error before anything is logged
    if not tracking.enabled:
        raise QualituneError("registering a model needs MLflow: set mlflow.enabled: true in params.yaml")
    if len(val_df) == 0:
        raise QualituneError("no validation rows to compare challenger and champion on")
    name = settings.model_name

    challenger_metrics = _evaluate_dir(scorer_dir, val_df, settings)
    ch_final = challenger_metrics.get("final")
    tags = _version_tags(challenger_metrics, settings.mode, params, scorer_dir)

    mlflow = import_mlflow()
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri)
    with (
        quiet_mlflow(),
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
                "challenger": numeric_only(challenger_metrics),
                **({"champion": numeric_only(champion_metrics)} if champion_metrics else {}),
                "promoted": float(promoted),
            }
        )
        report = decision.write(settings.report)
        log_artifacts(report)
    log.debug("%s", reason)  # callers (the register stage, the retraining flow) report the decision
    return decision
