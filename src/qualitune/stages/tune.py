"""DVC stage `tune`: Optuna search over the train stage; writes the best trial's params overlay.

Reads params `tune` (and `model`, `train`, `mlflow`, `pmod.out` for the trials). With the default
`tune.n_trials: 0` it only writes an empty overlay (`{}`), so `dvc repro` stays cheap. More workers:
run `qualitune tune` (or this module) elsewhere on the same `tune.storage` while the stage runs.
"""

from __future__ import annotations

import sys
from typing import Any

from qualitune.errors import QualituneError
from qualitune.stages import stage_main


def run_stage(params: dict[str, Any]) -> int:
    from qualitune.pipeline.tune import format_summary, run_search

    summary = run_search(params)
    print(format_summary(summary))
    if not summary["written"]:
        if summary.get("running", 0) > 0:  # another worker's trials will decide; it writes the file
            return 0
        raise QualituneError(
            f"no trial of study {summary['study']!r} completed, so {summary['out']} was not written"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("tune", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
