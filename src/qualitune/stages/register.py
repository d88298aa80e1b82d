"""DVC stage `register`: log the trained scorer to the MLflow registry and gate its promotion.

Reads params `register`, `mlflow` (tracking URI, experiment, `model_name`), `train.out` (the scorer
folder) and the val split of `pmod.out` (or `train.data`, as the train stage does). Registers a new
version with alias `challenger`, scores it and the current `champion` on the same val rows, moves
`champion` only if the challenger clears `register.min_final` and beats the champion by
`register.margin`, and writes the decision to `register.report` (a DVC metric). A rejected
challenger is a normal outcome, not a failure: the stage exits 0 and the report says why.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from qualitune.config import section
from qualitune.stages import stage_main


def register_scorer(
    params: dict[str, Any], *, scorer_dir: str | Path | None = None, data: str | Path | None = None
):
    """Register `scorer_dir` (default `train.out`) and apply the gate on the manifest's val split;
    returns the `qualitune.registry.Decision`."""
    from qualitune.manifest import read_manifest
    from qualitune.registry import RegisterSettings, log_and_register, registry_tracking_settings

    settings = RegisterSettings.from_params(params)
    tracking = registry_tracking_settings(params)
    tcfg = params.get("train") or {}
    scorer_dir = Path(scorer_dir or tcfg.get("out") or "models/scorer")
    data = data or tcfg.get("data") or section(params, "pmod")["out"]
    df = read_manifest(data)
    val_df = df[df["split"] == "val"].reset_index(drop=True)
    if len(val_df) == 0:
        raise ValueError(f"{data} has no val split to compare challenger and champion on")
    return log_and_register(scorer_dir, settings, tracking, val_df=val_df, params=params)


def run_stage(params: dict[str, Any]) -> int:
    d = register_scorer(params)  # the stage's one line; `qualitune register` prints the JSON decision
    print(f"register: {d.reason}; models:/{d.model_name}@champion -> v{d.champion_after}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
