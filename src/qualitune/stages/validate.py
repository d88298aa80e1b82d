"""DVC stage `validate`: GX gate over the ingested manifest (params section `validate`)."""

from __future__ import annotations

import argparse
import sys

from qualitune.config import load_params, section
from qualitune.validate import GateFailed, run_validation, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
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
        print(f"validation gate FAILED\n{exc}", file=sys.stderr)
        return 1
    print(summary(outcome))
    if cfg.get("metrics"):
        _write_metrics(cfg["metrics"], outcome.report)
    return 0


def _write_metrics(path: str, report: dict) -> None:
    """A flat metrics file for `dvc metrics show` (the full report stays in `validate.report`)."""
    import json
    from pathlib import Path

    keys = ("n_rows", "n_valid", "n_quarantined", "fail_share")
    flat = {k: report[k] for k in keys} | {f"n_{s}": n for s, n in report["per_split"].items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(flat, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
