"""Hyper-parameter search over the train stage with Optuna; the best trial becomes an overlay file.

Settings are the ``tune`` section of ``params.yaml``::

    tune:
      n_trials: 0                  # total over all workers; 0 = no search, `out` is just `{}`
      storage: sqlite:///optuna.db # any SQLAlchemy URL; workers on the same storage share the study
      study_name: qualitune
      space:
        lr: [1.0e-4, 1.0e-2]       # log-uniform
        epochs: [1, 4]             # int
        lora_r: [8, 16, 32]        # categorical; alpha = 2 * r; only with train.tuning lora/warmup
        label_range: [[1, 5], [10, 50], [0, 100]]

Each trial deep-merges its suggestions into params and runs :func:`qualitune.pipeline.train.train_scorer`,
which reports the validation ``final`` (``(SRCC + PLCC) / 2`` of the ``expected`` mode) after every
epoch so that the median pruner can stop hopeless trials. The best trial's suggestions are written to
``tune.out`` as a partial params mapping that the train stage overlays (``train.tuned_params``).

Several workers (processes or machines) running ``qualitune tune`` on the same storage finish
``n_trials`` finished (complete or pruned) trials together, exactly: a worker stops once the finished
plus running trials reach ``n_trials``, and a trial that finds ``n_trials`` trials below its own number
already finished or running gives itself up (state FAIL, user attr ``surplus``) before training. Failed
trials (an exception, a NaN value) do not count, so others replace them. The study resumes after an
interruption: running again continues the same study (``load_if_exists``); a killed worker's trial is
failed by the storage heartbeat once it is ``grace_s`` seconds stale and replaced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from qualitune.config import deep_merge
from qualitune.errors import QualituneError
from qualitune.progress import Progress

log = logging.getLogger("qualitune.tune")

SECTION = "tune"
TRIAL_PREFIX = "trial-"
DEFAULT_SPACE: dict[str, Any] = {
    "lr": [1.0e-4, 1.0e-2],
    "epochs": [1, 4],
    "lora_r": [8, 16, 32],
    "label_range": [[1, 5], [10, 50], [0, 100]],
}
_SPACE_KEYS = ("lr", "epochs", "lora_r", "label_range")
_KNOWN_KEYS = (
    "storage",
    "study_name",
    "n_trials",
    "timeout_s",
    "seed",
    "direction",
    "out",
    "trials_dir",
    "pruner",
    "space",
    "heartbeat_s",
    "grace_s",
    "max_failures",
)


# ---------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class PrunerSettings:
    """Optuna's MedianPruner; ``tune.pruner: null`` switches pruning off."""

    enabled: bool = True
    n_startup_trials: int = 5
    n_warmup_steps: int = 1


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune`` params section, validated. Build it with :meth:`from_params`."""

    storage: str = "sqlite:///optuna.db"
    study_name: str = "qualitune"
    n_trials: int = 0
    timeout_s: float | None = None
    seed: int | None = 0
    direction: str = "maximize"
    out: str = "tuned_params.yaml"
    trials_dir: str = "models/trials"
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    space: dict[str, Any] = field(default_factory=lambda: _normalise_space(DEFAULT_SPACE))
    heartbeat_s: int = 60
    grace_s: int = 180
    max_failures: int = 10

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TuneSettings:
        from qualitune.config import checked_section

        raw = checked_section(params, SECTION, _KNOWN_KEYS)
        kw: dict[str, Any] = {}
        for key in ("storage", "study_name", "out", "trials_dir"):
            if key in raw:
                value = raw[key]
                if not isinstance(value, str) or not value.strip():
                    raise QualituneError(f"{SECTION}.{key} must be a non-empty string, got {value!r}")
                kw[key] = value.strip()
        for key, minimum in (("n_trials", 0), ("heartbeat_s", 1), ("grace_s", 1), ("max_failures", 1)):
            if key in raw:
                kw[key] = _int(raw[key], f"{SECTION}.{key}", minimum)
        if raw.get("timeout_s") is not None:
            timeout = raw["timeout_s"]
            if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
                raise QualituneError(
                    f"{SECTION}.timeout_s must be seconds > 0 (or null for no limit), got {timeout!r}"
                )
            kw["timeout_s"] = float(timeout)
        if "seed" in raw:
            kw["seed"] = None if raw["seed"] is None else _int(raw["seed"], f"{SECTION}.seed", 0)
        if "direction" in raw:
            if raw["direction"] not in ("maximize", "minimize"):
                raise QualituneError(
                    f"{SECTION}.direction must be maximize or minimize, got {raw['direction']!r}"
                )
            kw["direction"] = raw["direction"]
        if "pruner" in raw:
            kw["pruner"] = _pruner(raw["pruner"])
        if "space" in raw:
            kw["space"] = _normalise_space(raw["space"])
        settings = cls(**kw)
        if settings.grace_s <= settings.heartbeat_s:
            raise QualituneError(f"{SECTION}.grace_s must be larger than {SECTION}.heartbeat_s")
        return settings

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["storage"] = _safe_url(self.storage)
        return d


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise QualituneError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _pruner(raw: Any) -> PrunerSettings:
    if raw is None or raw is False:
        return PrunerSettings(enabled=False)
    if not isinstance(raw, Mapping):
        raise QualituneError(f"{SECTION}.pruner must be a mapping (n_startup_trials, n_warmup_steps) or null")
    unknown = sorted(set(raw) - {"n_startup_trials", "n_warmup_steps"})
    if unknown:
        raise QualituneError(f"unknown key(s) in {SECTION}.pruner: {unknown}")
    return PrunerSettings(
        enabled=True,
        n_startup_trials=_int(raw.get("n_startup_trials", 5), f"{SECTION}.pruner.n_startup_trials", 0),
        n_warmup_steps=_int(raw.get("n_warmup_steps", 1), f"{SECTION}.pruner.n_warmup_steps", 0),
    )


def range_key(lo: int, hi: int) -> str:
    """A label range as the primitive Optuna stores for a categorical choice: ``[10, 50]`` -> ``"10-50"``."""
    return f"{lo}-{hi}"


def parse_range_key(key: str) -> list[int]:
    lo, _, hi = str(key).partition("-")
    return [int(lo), int(hi)]


def _normalise_space(raw: Any) -> dict[str, Any]:
    """Validate ``tune.space``; a key left out (or null) is not searched, its params value stays."""
    if not isinstance(raw, Mapping):
        raise QualituneError(f"{SECTION}.space must be a mapping with keys from {list(_SPACE_KEYS)}")
    unknown = sorted(set(raw) - set(_SPACE_KEYS))
    if unknown:
        raise QualituneError(f"unknown key(s) in {SECTION}.space: {unknown}; known: {list(_SPACE_KEYS)}")
    space: dict[str, Any] = {}
    if raw.get("lr") is not None:
        lo, hi = _pair(raw["lr"], "lr", float)  # float(): YAML 1.1 reads `3e-4` (no dot) as a string
        if not 0 < lo <= hi:
            raise QualituneError(
                f"{SECTION}.space.lr must be [low, high] with 0 < low <= high, got {raw['lr']!r}"
            )
        space["lr"] = [lo, hi]
    if raw.get("epochs") is not None:
        lo, hi = _pair(raw["epochs"], "epochs", int)
        if not 0 <= lo <= hi:
            raise QualituneError(f"{SECTION}.space.epochs must be [low, high] with 0 <= low <= high")
        space["epochs"] = [lo, hi]
    if raw.get("lora_r") is not None:
        choices = raw["lora_r"]
        if not isinstance(choices, list | tuple) or not choices:
            raise QualituneError(f"{SECTION}.space.lora_r must be a non-empty list of ranks, got {choices!r}")
        ranks = [_int(r, f"{SECTION}.space.lora_r[]", 1) for r in choices]
        if len(set(ranks)) != len(ranks):
            raise QualituneError(f"{SECTION}.space.lora_r has duplicates: {ranks}")
        space["lora_r"] = ranks
    if raw.get("label_range") is not None:
        choices = raw["label_range"]
        if not isinstance(choices, list | tuple) or not choices:
            raise QualituneError(f"{SECTION}.space.label_range must be a non-empty list of [lo, hi] pairs")
        ranges = []
        for c in choices:
            lo, hi = _pair(c, "label_range[]", int)
            if not 0 <= lo < hi:
                raise QualituneError(f"{SECTION}.space.label_range: {c!r} needs 0 <= lo < hi")
            ranges.append([lo, hi])
        if len({tuple(r) for r in ranges}) != len(ranges):
            raise QualituneError(f"{SECTION}.space.label_range has duplicates: {ranges}")
        space["label_range"] = ranges
    return space


def _pair(value: Any, key: str, cast: Callable[[Any], Any]) -> tuple[Any, Any]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise QualituneError(f"{SECTION}.space.{key} must be a [low, high] pair, got {value!r}")
    try:
        lo, hi = cast(value[0]), cast(value[1])
    except (TypeError, ValueError) as e:
        raise QualituneError(f"{SECTION}.space.{key} must hold numbers, got {value!r}") from e
    if cast is int and (float(value[0]) != lo or float(value[1]) != hi):
        raise QualituneError(f"{SECTION}.space.{key} must hold integers, got {value!r}")
    return lo, hi


def _safe_url(url: str) -> str:
    """The storage URL without its password (for logs, MLflow and the overlay's header)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL; the storage will say so
        return url


# ---------------------------------------------------------------------------------------------------------
# The search space and the objective


def suggest(trial: optuna.Trial, space: Mapping[str, Any]) -> dict[str, Any]:
    """Sample one point of ``space`` (normalised by :class:`TuneSettings`) as a partial params overlay."""
    values: dict[str, Any] = {}
    if "lr" in space:
        values["lr"] = trial.suggest_float("lr", space["lr"][0], space["lr"][1], log=True)
    if "epochs" in space:
        values["epochs"] = trial.suggest_int("epochs", space["epochs"][0], space["epochs"][1])
    if "lora_r" in space:
        values["lora_r"] = trial.suggest_categorical("lora_r", list(space["lora_r"]))
    if "label_range" in space:
        choices = [range_key(*r) for r in space["label_range"]]
        values["label_range"] = trial.suggest_categorical("label_range", choices)
    return overlay_from_values(values)


def overlay_from_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's stored values of a trial (``trial.params``) as the partial params overlay they mean."""
    train: dict[str, Any] = {}
    if "lr" in values:
        train["lr"] = float(values["lr"])
    if "epochs" in values:
        train["epochs"] = int(values["epochs"])
    if "lora_r" in values:
        r = int(values["lora_r"])
        train["lora"] = {"r": r, "alpha": 2 * r}
    if "label_range" in values:
        train["label_range"] = parse_range_key(values["label_range"])
    return {"train": train}


LORA_TUNINGS = ("lora", "warmup")  # train.tuning values that train LoRA adapters (qualitune.vlm.trainable)


def effective_space(space: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``space`` without ``lora_r`` when ``train.tuning`` trains no LoRA (the rank would change nothing)."""
    from qualitune.training.settings import TrainSettings

    tuning = TrainSettings.from_params(params.get("train") or {}).tuning
    if "lora_r" in space and tuning not in LORA_TUNINGS:
        log.info("train.tuning is %r (no LoRA): tune.space.lora_r is not searched", tuning)
        return {k: v for k, v in space.items() if k != "lora_r"}
    return dict(space)


class SurplusTrial(Exception):
    """A trial created after ``n_trials`` others were already finished or running (a worker race)."""


# trials that count towards n_trials: finished, or on their way (a running trial may still fail)
_LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def trial_dir(settings: TuneSettings, number: int) -> Path:
    return Path(settings.trials_dir) / f"{TRIAL_PREFIX}{number}"


class LostTrial(Exception):
    """Another worker failed this worker's running trial (its heartbeat looked stale): abandon it."""


class Objective:
    """The Optuna objective: one train-stage run of ``params`` with the trial's suggestions merged in.

    Reports the validation ``final`` after every epoch (step = epoch index over all phases) and
    raises ``optuna.TrialPruned`` when the pruner stops the run. Returns the final validation
    ``final``; a NaN (constant predictions: correlations undefined) is returned as NaN, which Optuna
    records as a FAILED trial -- it is never replaced by a number. ``lost`` is the number of a trial
    that another worker failed while this one ran it (see :func:`run_search`).
    """

    def __init__(self, params: dict[str, Any], settings: TuneSettings | None = None) -> None:
        self.params = params
        self.settings = settings or TuneSettings.from_params(params)
        self.space = effective_space(self.settings.space, params)
        self.lost: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        from qualitune.pipeline.train import train_scorer

        settings = self.settings
        below = [t for t in trial.study.get_trials(deepcopy=False, states=_LIVE) if t.number < trial.number]
        if settings.n_trials and len(below) >= settings.n_trials:
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrial(
                f"trial {trial.number}: {len(below)} trials below it are finished or running already"
            )
        overlay = suggest(trial, self.space)
        trial.set_user_attr("overlay", overlay)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        out_dir = trial_dir(settings, trial.number)
        if out_dir.exists():  # a leftover of an earlier study of the same name: never another live trial's
            shutil.rmtree(out_dir)
        trial_params = deep_merge(self.params, overlay)
        # the trial's own values must win: no earlier best overlaid on top, no resume from another trial
        trial_params["train"] = {
            **trial_params["train"],
            "tuned_params": None,
            "checkpoint_dir": str(out_dir / "checkpoints"),
        }
        step = 0
        pruned = lost = False

        def on_epoch_end(phase: int, epoch: int, metrics: dict[str, Any]) -> bool:
            nonlocal step, pruned, lost
            try:
                trial.report(float(metrics["final"]), step=step)
            except optuna.exceptions.UpdateFinishedTrialError:
                lost = True
                return True
            step += 1
            pruned = trial.should_prune()
            return pruned

        log.info("trial %d: %s", trial.number, overlay["train"])
        metrics = train_scorer(
            trial_params,
            on_epoch_end=on_epoch_end,
            out_dir=out_dir,
            metrics_path=out_dir / "metrics.json",
            run_name=f"trial-{trial.number}",
            nested=True,
        )
        if lost or trial.number in {
            t.number for t in trial.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        }:
            self.lost = trial.number
            raise LostTrial(f"trial {trial.number} was failed by another worker while this one ran it")
        if pruned:
            raise optuna.TrialPruned(f"pruned after {step} epoch(s)")
        value = float(metrics["val"]["expected"]["final"])
        if math.isnan(value):
            m = metrics["val"]["expected"]
            reason = (
                f"validation final is NaN (constant predictions or too few valid items: n={m.get('n')}, "
                f"n_missing={m.get('n_missing')}, parse_failures={m.get('parse_failures')})"
            )
            trial.set_user_attr("fail_reason", reason)
            log.warning("trial %d failed: %s", trial.number, reason)
        return value


def objective(params: dict[str, Any], settings: TuneSettings | None = None) -> Objective:
    """The objective for ``study.optimize`` (see :class:`Objective`)."""
    return Objective(params, settings)


# ---------------------------------------------------------------------------------------------------------
# Storage, sampler and the search


class TrialSeededSampler(BaseSampler):
    """TPE seeded per trial (``seed + trial.number``) instead of per process.

    Workers started with the same seed would otherwise draw the same random start-up points and train
    the same configurations side by side. A single worker stays reproducible. (TPE keeps no state
    between trials but its random generators: it reads the history from the storage every time.)
    """

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._inner = TPESampler(seed=seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._seed is not None:
            self._inner = TPESampler(seed=self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_storage(settings: TuneSettings) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if settings.storage.startswith("sqlite"):
        # concurrent workers wait for sqlite's write lock instead of failing after 5 s
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            settings.storage, heartbeat_interval=settings.heartbeat_s, grace_period=settings.grace_s, **kwargs
        )


def load_study(settings: TuneSettings, *, attempts: int = 10) -> optuna.Study:
    """Create the study, or load it when it exists (resume; other workers).

    Workers starting together on a fresh database race to create its tables; the loser's error is
    retried, so any number of workers may start at once.
    """
    import sqlalchemy.exc

    if settings.storage.startswith("sqlite:///"):
        db = settings.storage[len("sqlite:///") :].partition("?")[0]
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=settings.pruner.n_startup_trials, n_warmup_steps=settings.pruner.n_warmup_steps
        )
        if settings.pruner.enabled
        else optuna.pruners.NopPruner()
    )
    retry = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.IntegrityError,
        optuna.exceptions.StorageInternalError,
    )
    for attempt in range(1, attempts + 1):
        try:
            study = optuna.create_study(
                storage=make_storage(settings),
                sampler=TrialSeededSampler(settings.seed),
                pruner=pruner,
                study_name=settings.study_name,
                direction=settings.direction,
                load_if_exists=True,
            )
            break
        except retry:
            if attempt == attempts:
                raise
            time.sleep(0.1 + random.random() * 0.5)
    if study.direction.name.lower() != settings.direction:
        raise QualituneError(
            f"study {settings.study_name!r} in {_safe_url(settings.storage)} was created to "
            f"{study.direction.name.lower()}, but {SECTION}.direction is {settings.direction}"
        )
    return study


def _counts(study: optuna.Study) -> dict[str, int]:
    counts = {"complete": 0, "pruned": 0, "failed": 0, "surplus": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        name = t.state.name.lower()
        if name == "fail":
            counts["surplus" if t.user_attrs.get("surplus") else "failed"] += 1
        elif name in counts:
            counts[name] += 1
    return counts


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def overlay_of(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's params overlay, as its objective merged it."""
    return trial.user_attrs.get("overlay") or overlay_from_values(trial.params)


def write_overlay(path: str | Path, overlay: Mapping[str, Any], header: str = "") -> None:
    """Write ``overlay`` as YAML atomically (workers finishing together never leave half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(header + yaml.safe_dump(dict(overlay), sort_keys=True, default_flow_style=False))
    os.replace(tmp, path)


def _header(settings: TuneSettings, best: FrozenTrial, n_finished: int) -> str:
    return (
        f"# Best trial of Optuna study {settings.study_name!r} in {_safe_url(settings.storage)}:\n"
        f"# trial {best.number}, validation final {best.value:.6g} ({n_finished} finished trials); "
        f"its scorer: {trial_dir(settings, best.number)}\n"
        "# Written by `qualitune tune`; the train stage overlays it on params (train.tuned_params).\n"
    )


def prune_trial_dirs(settings: TuneSettings, study: optuna.Study) -> list[Path]:
    """Delete the folders of finished trials other than the best (a running trial's folder stays)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    best = best_trial(study)
    removed = []
    root = Path(settings.trials_dir)
    if not root.is_dir():
        return removed
    for d in sorted(root.glob(f"{TRIAL_PREFIX}*")):
        suffix = d.name[len(TRIAL_PREFIX) :]
        t = trials.get(int(suffix)) if suffix.isdigit() else None
        if t is None or not t.state.is_finished() or (best is not None and t.number == best.number):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _optimize(
    study: optuna.Study,
    obj: Objective,
    settings: TuneSettings,
    catch: tuple[type[Exception], ...],
    after_trial: Callable[[optuna.Study, FrozenTrial], None],
) -> None:
    """``study.optimize`` until the study has ``n_trials``, going on when a trial of this worker was lost.

    A worker that stalls longer than ``grace_s`` (or loses the database for that long) finds its
    running trial failed by another worker, which replaces it; Optuna then refuses the trial's result
    (``Cannot tell a FAIL trial``). That trial is abandoned and this worker continues with a new one.
    """
    start = time.monotonic()
    while True:
        timeout = None
        if settings.timeout_s is not None:
            timeout = settings.timeout_s - (time.monotonic() - start)
            if timeout <= 0:
                return
        obj.lost = None
        try:
            study.optimize(
                obj,
                timeout=timeout,
                catch=catch,
                # finished + running: a worker does not start a trial that another one is running already
                callbacks=[MaxTrialsCallback(settings.n_trials, states=_LIVE), after_trial],
                gc_after_trial=True,
            )
            return
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            if obj.lost is None:
                raise
            log.warning(
                "trial %d was failed by another worker: its heartbeat was older than tune.grace_s (%d s); "
                "this worker stalled or lost the storage that long. Going on with a new trial.",
                obj.lost,
                settings.grace_s,
            )


@contextlib.contextmanager
def _sqlite_lock(uri: str | None) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` while opening a run in the sqlite MLflow store ``uri``.

    MLflow creates and migrates a new sqlite store on first use; two workers doing that at once fail
    (``table ... already exists``) and can leave the store half-migrated. Workers on a server store
    (or without ``fcntl``) go ahead unlocked.
    """
    db = None
    if uri and uri.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite" and ":///" in uri:
        path = uri.split(":///", 1)[1].partition("?")[0]
        db = Path(path) if path and path != ":memory:" else None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if db is None or fcntl is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_search(params: dict[str, Any], settings: TuneSettings | None = None) -> dict[str, Any]:
    """Run (or join, or resume) the study until it has ``n_trials`` finished trials; write the best overlay.

    ``n_trials: 0`` writes ``{}`` to ``out`` and touches nothing else. Returns a summary: trial counts,
    the best trial (or None) and whether ``out`` was written.
    """
    settings = settings or TuneSettings.from_params(params)
    if settings.n_trials == 0:
        write_overlay(
            settings.out, {}, "# tune.n_trials is 0: no search, the train stage uses params as they are\n"
        )
        log.debug("tune.n_trials is 0: wrote an empty overlay to %s", settings.out)  # the summary says it
        return {"n_trials": 0, "out": settings.out, "written": True, "best": None}

    from qualitune.tracking import log_artifacts, log_metrics, start_run, tracking_settings

    study = load_study(settings)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed worker's trial, once its heartbeat is stale
    live = study.get_trials(deepcopy=False, states=_LIVE)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    log.info(
        "study %r in %s: %d of %d trials finished or running; worker %s",
        settings.study_name,
        _safe_url(settings.storage),
        len(live),
        settings.n_trials,
        worker,
    )
    failures = 0

    def finished() -> int:  # every worker's, so a joining worker's bar starts where the study is
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    progress = Progress(settings.n_trials, f"tune {settings.study_name}", "trials", start=finished())

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        nonlocal failures
        done = finished()
        best = best_trial(study)
        progress.update(min(done, settings.n_trials), f"best {best.value:.4f}" if best is not None else "")
        if trial.state.name == "COMPLETE":
            log_metrics({"trial_value": trial.value}, step=trial.number)
        elif trial.state.name == "FAIL" and not trial.user_attrs.get("surplus"):
            failures += 1
            if failures >= settings.max_failures:
                log.error("%d trials failed in this worker (tune.max_failures): stopping it", failures)
                study.stop()

    catch: tuple[type[Exception], ...] = (SurplusTrial,)
    with contextlib.suppress(ImportError):
        import torch

        catch += (torch.cuda.OutOfMemoryError,)

    tracking = tracking_settings(params)
    with contextlib.ExitStack() as run:
        with _sqlite_lock(tracking.tracking_uri if tracking.enabled else None):
            run.enter_context(
                start_run(
                    tracking,
                    "tune",
                    params={"tune": settings.to_dict()},
                    tags={"stage": "tune", "optuna_study": settings.study_name, "worker": worker},
                )
            )
        if len(live) < settings.n_trials:
            with progress:
                _optimize(study, objective(params, settings), settings, catch, after_trial)
        counts = _counts(study)
        best = best_trial(study)
        summary: dict[str, Any] = {
            "study": settings.study_name,
            "storage": _safe_url(settings.storage),
            "n_trials": settings.n_trials,
            **counts,
            "best": None,
            "out": settings.out,
            "written": False,
        }
        if best is not None:
            overlay = overlay_of(best)
            write_overlay(
                settings.out, overlay, _header(settings, best, counts["complete"] + counts["pruned"])
            )
            summary["best"] = {
                "number": best.number,
                "value": best.value,
                "params": best.params,
                "overlay": overlay,
            }
            summary["written"] = True
            log_metrics({"best_value": best.value})
            log_artifacts(settings.out)
            log.info("best trial %d: final %.4f %s -> %s", best.number, best.value, best.params, settings.out)
        else:
            log.warning(
                "no trial of study %r completed yet: %s not written", settings.study_name, settings.out
            )
        log_metrics({k: counts[k] for k in ("complete", "pruned", "failed", "running")})
        prune_trial_dirs(settings, study)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    if summary.get("n_trials") == 0:
        return f"tune: n_trials is 0, wrote an empty overlay to {summary['out']}"
    line = (
        f"tune: study {summary['study']!r}: {summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed, {summary['running']} running (target {summary['n_trials']})"
    )
    best = summary.get("best")
    if best:
        line += (
            f"; best trial {best['number']} final {best['value']:.4f} {best['params']} -> {summary['out']}"
        )
    return line


__all__ = [
    "DEFAULT_SPACE",
    "PrunerSettings",
    "LostTrial",
    "Objective",
    "SurplusTrial",
    "TrialSeededSampler",
    "TuneSettings",
    "best_trial",
    "effective_space",
    "format_summary",
    "load_study",
    "objective",
    "overlay_from_values",
    "overlay_of",
    "parse_range_key",
    "prune_trial_dirs",
    "range_key",
    "run_search",
    "suggest",
    "trial_dir",
    "write_overlay",
]
