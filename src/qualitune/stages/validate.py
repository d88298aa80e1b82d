"""DVC stage `validate`: GX gate over the ingested manifest (params section `validate`)."""

from __future__ import annotations

import sys

from qualitune.sections import IngestSettings, ValidateSettings
from qualitune.stages import stage_main
from qualitune.validate import GateFailed, run_validation, summary, write_metrics


def run_stage(params: dict) -> int:
    s = ValidateSettings.from_params(params)
    try:
        outcome = run_validation(
            IngestSettings.value(params, "out"),
            out=s.out,
            quarantine=s.quarantine,
            report=s.report,
            html=s.html,
            max_fail_share=s.max_fail_share,
            check_media=s.check_media,
        )
    except GateFailed as exc:
        print(f"validation gate FAILED\n{exc}\nquarantine: {s.quarantine}", file=sys.stderr)
        return 1
    print(summary(outcome))
    if s.metrics:
        write_metrics(outcome, s.metrics)
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
