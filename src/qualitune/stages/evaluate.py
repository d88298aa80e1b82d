"""DVC stage `evaluate`: the trained scorer against MOS, per split, dataset and scoring mode.

A shell over :func:`qualitune.pipeline.evaluate.evaluate_scorer` (what it reads and writes is
described there); prints one summary line.
"""

from __future__ import annotations

import sys
from typing import Any

from qualitune.stages import stage_main


def run_stage(params: dict[str, Any]) -> int:
    from qualitune.pipeline.evaluate import evaluate_scorer, summary_line
    from qualitune.sections import EvaluateSettings

    metrics = evaluate_scorer(params)
    print(
        summary_line(metrics, EvaluateSettings.from_params(params).modes[0])
    )  # the stage's one line; the rest is in the metrics file
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("evaluate", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
