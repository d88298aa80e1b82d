"""DVC stage `pmod`: annotator scores → calibrated machine opinion distributions + descriptions.

Writes the training manifest (labels + PMOD + descriptions), the calibrations, and as DVC metrics and
plots the SRCC/PLCC of each annotator and of the PMOD mean against MOS per split.
"""

from __future__ import annotations

import sys

from qualitune.config import section
from qualitune.stages import stage_main


def run_stage(params: dict) -> int:
    from qualitune.pmod import run_pmod

    cfg = section(params, "pmod")
    ann_cfg = section(params, "annotate")
    names = [n for n in ann_cfg["annotators"] if n not in set(cfg.get("exclude", []))]
    run_pmod(
        section(params, "labels")["out"],
        ann_cfg["out"],
        names,
        out=cfg["out"],
        calibration=cfg.get("calibration", "isotonic"),
        min_std=float(cfg.get("min_std", 0.25)),
        metrics=cfg["metrics"],
        calibrations=cfg["calibrations"],
        plot_correlations=cfg["plot_correlations"],
        plot_scatter=cfg["plot_scatter"],
        plot_calibration=cfg["plot_calibration"],
        calibration_png=cfg["calibration_png"],
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("pmod", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
