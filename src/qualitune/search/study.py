"""The Optuna study on its storage: the per-trial seeded sampler, creating or joining the study
(workers racing on a fresh database included), trial counts, the best trial's overlay file and the
trial folders kept."""

from __future__ import annotations

import os
import random
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from qualitune.errors import QualituneError
from qualitune.search.settings import SECTION, TuneSettings, safe_url
from qualitune.search.space import overlay_from_values

TRIAL_PREFIX = "trial-"
# trials that count towards n_trials: finished, or on their way (a running trial may still fail)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def trial_dir(settings: TuneSettings, number: int) -> Path:
    return Path(settings.trials_dir) / f"{TRIAL_PREFIX}{number}"


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
            f"study {settings.study_name!r} in {safe_url(settings.storage)} was created to "
            f"{study.direction.name.lower()}, but {SECTION}.direction is {settings.direction}"
        )
    return study


def trial_counts(study: optuna.Study) -> dict[str, int]:
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


def overlay_header(settings: TuneSettings, best: FrozenTrial, n_finished: int) -> str:
    return (
        f"# Best trial of Optuna study {settings.study_name!r} in {safe_url(settings.storage)}:\n"
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
