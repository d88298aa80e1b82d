"""DVC stage: `python -m qualitune.stages.ingest [--params params.yaml]`.

Reads section `ingest` (`qualitune.sections.IngestSettings`) and calls
`qualitune.ingest.ingest_to_file`, the same function as the CLI, so the pipeline and a hand run
produce identical manifests.
"""

from __future__ import annotations

import sys
from typing import Any

from qualitune.sections import IngestSettings
from qualitune.stages import stage_main


def run_stage(params: dict[str, Any]) -> int:
    from qualitune.ingest import ingest_to_file, summary_lines

    s = IngestSettings.from_params(params)
    manifest = ingest_to_file(
        s.format,
        s.root,
        s.out,
        split_ratios=s.split_ratios,
        val_from_train=s.val_from_train,
        seed=s.seed,
        holdout=s.holdout,
        **s.options,
    )
    print("\n".join(summary_lines(manifest)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("ingest", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
