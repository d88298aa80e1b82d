"""DVC stage `train`: fine-tune the VLM scorer on the PMOD manifest's train split.

A shell over :func:`qualitune.pipeline.train.train_scorer` (what it reads and writes is described
there). Runs unchanged under `accelerate launch -m qualitune.stages.train`.
"""

from __future__ import annotations

import sys
from typing import Any

from qualitune.stages import stage_main


def run_stage(params: dict[str, Any]) -> int:
    from qualitune.pipeline.train import summary_line, train_scorer

    metrics = train_scorer(params)
    if metrics:  # the main process: the stage's one line (library callers, e.g. tune, stay quiet)
        print(summary_line(metrics))
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("train", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
