"""DVC stage `validate`: GX gate over the ingested manifest (params section `validate`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qualitune.config import section
from qualitune.stages import stage_main
from qualitune.validate import GateFailed, run_validation, summary


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
        # a flat metrics file for `dvc metrics show` (the full report stays in `validate.report`)
        r = outcome.report
        flat = {k: r[k] for k in ("n_rows", "n_valid", "n_quarantined", "fail_share")}
        flat |= {f"n_{s}": n for s, n in r["per_split"].items()}
        Path(cfg["metrics"]).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg["metrics"]).write_text(json.dumps(flat, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("validate", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
