"""Registering a scorer from params: the `register` stage's work, also `qualitune register`'s and the
retraining flow's.

Reads params `register`, `mlflow` (tracking URI, experiment, `model_name`), `train.out` (the scorer
folder) and the val split of `pmod.out` (or `train.data`, as training does); the gate itself is
:func:`qualitune.gate.log_and_register`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qualitune.errors import QualituneError


def register_scorer(
    params: dict[str, Any], *, scorer_dir: str | Path | None = None, data: str | Path | None = None
):
    """Register `scorer_dir` (default `train.out`) and apply the gate on the manifest's val split;
    returns the `qualitune.gate.Decision`."""
    from qualitune.gate import RegisterSettings, log_and_register
    from qualitune.manifest import read_manifest
    from qualitune.sections import PmodSettings, TrainStageSettings
    from qualitune.tracking import tracking_settings

    settings = RegisterSettings.from_params(params)
    tracking = tracking_settings(params)
    scorer_dir = Path(scorer_dir or TrainStageSettings.value(params, "out"))
    data = data or TrainStageSettings.value(params, "data") or PmodSettings.value(params, "out")
    df = read_manifest(data)
    val_df = df[df["split"] == "val"].reset_index(drop=True)
    if len(val_df) == 0:
        raise QualituneError(f"{data} has no val split to compare challenger and champion on")
    return log_and_register(scorer_dir, settings, tracking, val_df=val_df, params=params)
