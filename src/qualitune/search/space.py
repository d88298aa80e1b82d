"""The search space as params: a trial's sampled point and Optuna's stored values as the partial
params overlay they mean (`train.lr`, `train.epochs`, `train.lora.{r, alpha}`, `train.label_range`),
and the space actually searched for a given train section."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import optuna

from qualitune.search.settings import parse_range_key, range_key

log = logging.getLogger("qualitune.tune")


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
