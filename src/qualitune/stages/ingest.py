"""DVC stage: `python -m qualitune.stages.ingest [--params params.yaml]`.

Reads section `ingest` (format, root, out, options, split_ratios, val_from_train, seed, holdout) and calls
`qualitune.ingest.ingest_to_file`, the same function as the CLI, so the pipeline and a hand run
produce identical manifests.
"""

from __future__ import annotations

import sys
from typing import Any

from qualitune.config import section
from qualitune.errors import QualituneError
from qualitune.stages import stage_main


def run_stage(params: dict[str, Any]) -> int:
    from qualitune.ingest import DEFAULT_SPLIT_RATIOS, ingest_to_file, summary_lines

    cfg = section(params, "ingest")
    missing = [k for k in ("format", "root", "out") if not cfg.get(k)]
    if missing:
        raise QualituneError(f"params section 'ingest' lacks {missing}; it has {sorted(cfg)}")
    options = cfg.get("options") or {}
    if not isinstance(options, dict):
        raise QualituneError(f"params ingest.options must be a mapping, got {type(options).__name__}")
    manifest = ingest_to_file(
        str(cfg["format"]),
        cfg["root"],
        cfg["out"],
        split_ratios=cfg.get("split_ratios") or DEFAULT_SPLIT_RATIOS,
        val_from_train=float(cfg.get("val_from_train", 0.1)),
        seed=int(cfg.get("seed", 42)),
        holdout=cfg.get("holdout"),
        **options,
    )
    for line in summary_lines(manifest):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
