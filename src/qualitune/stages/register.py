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
from typing import Any

from qualitune.stages import stage_main


def run_stage(params: dict[str, Any]) -> int:
    from qualitune.pipeline.register import register_scorer

    d = register_scorer(params)  # the stage's one line; `qualitune register` prints the JSON decision
    print(f"register: {d.reason}; models:/{d.model_name}@champion -> v{d.champion_after}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("register", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
