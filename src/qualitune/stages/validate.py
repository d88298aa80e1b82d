"""DVC stage `validate`: GX gate over the ingested manifest (params section `validate`)."""

from __future__ import annotations

import sys

from qualitune.config import section
from qualitune.stages import stage_main
from qualitune.validate import GateFailed, run_validation, summary, write_metrics


def run_stage(params: dict) -> int:
    cfg = section(params, "validate")
    try:
        outcome = run_validation(
            section(params, "ingest")["out"],
            out=cfg["out"],
            quarantine=cfg["quarantine"],
            report=cfg["report"],
            html=cfg.get("html"),
            max_fail_share=float(cfg.get("max_fail_share", 0.0)),
            check_media=bool(cfg.get("check_media", True)),
        )
    except GateFailed as exc:
        print(f"validation gate FAILED\n{exc}\nquarantine: {cfg['quarantine']}", file=sys.stderr)
        return 1
    print(summary(outcome))
    if cfg.get("metrics"):
        write_metrics(outcome, cfg["metrics"])
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
