"""One Optuna trial: its point of the search space as a params overlay, and the train-stage run it
scores (`Objective`), with the guards that keep several workers on one study exact (surplus and lost
trials)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
from typing import Any

import optuna
from optuna.trial import TrialState

from qualitune.config import deep_merge
from qualitune.search.settings import TuneSettings
from qualitune.search.space import effective_space, suggest
from qualitune.search.study import LIVE, trial_dir

log = logging.getLogger("qualitune.tune")


class SurplusTrial(Exception):
    """A trial created after ``n_trials`` others were already finished or running (a worker race)."""


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
        below = [t for t in trial.study.get_trials(deepcopy=False, states=LIVE) if t.number < trial.number]
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
