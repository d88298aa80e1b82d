"""DVC stage `pmod`: annotator scores → calibrated machine opinion distributions + descriptions.

Writes the training manifest (labels + PMOD + descriptions), the calibrations, and as DVC metrics and
plots the SRCC/PLCC of each annotator and of the PMOD mean against MOS per split.
"""

from __future__ import annotations

import sys

from qualitune.sections import AnnotateSettings, LabelsSettings, PmodSettings
from qualitune.stages import stage_main


def run_stage(params: dict) -> int:
    from qualitune.pmod import run_pmod

    s = PmodSettings.from_params(params)
    annotators = AnnotateSettings.value(params, "annotators")
    names = [n for n in annotators if n not in set(s.exclude)]
    run_pmod(
        LabelsSettings.value(params, "out"),
        AnnotateSettings.value(params, "out"),
        names,
        out=s.out,
        calibration=s.calibration,
        min_std=s.min_std,
        **s.outputs(),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("pmod", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
