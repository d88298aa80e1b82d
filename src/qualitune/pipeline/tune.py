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
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from qualitune.progress import Progress
from qualitune.search import (
    LIVE,
    Objective,
    SurplusTrial,
    TuneSettings,
    best_trial,
    load_study,
    objective,
    overlay_header,
    overlay_of,
    prune_trial_dirs,
    safe_url,
    trial_counts,
    write_overlay,
)

log = logging.getLogger("qualitune.tune")


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
                callbacks=[MaxTrialsCallback(settings.n_trials, states=LIVE), after_trial],
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
    live = study.get_trials(deepcopy=False, states=LIVE)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    log.info(
        "study %r in %s: %d of %d trials finished or running; worker %s",
        settings.study_name,
        safe_url(settings.storage),
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
        counts = trial_counts(study)
        best = best_trial(study)
        summary: dict[str, Any] = {
            "study": settings.study_name,
            "storage": safe_url(settings.storage),
            "n_trials": settings.n_trials,
            **counts,
            "best": None,
            "out": settings.out,
            "written": False,
        }
        if best is not None:
            overlay = overlay_of(best)
            write_overlay(
                settings.out, overlay, overlay_header(settings, best, counts["complete"] + counts["pruned"])
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
