"""DVC stage `annotate`: every validated item scored by the machine annotators (params section `annotate`).

Scores are cached per file content outside the DVC outputs (`annotate.cache_dir`), so adding items to a
dataset re-scores only the new ones even though DVC reruns the stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qualitune.config import section
from qualitune.stages import stage_main


def run_stage(params: dict) -> int:
    from qualitune.annotate import annotate_paths
    from qualitune.manifest import read_manifest

    cfg = section(params, "annotate")
    df = read_manifest(section(params, "validate")["out"])
    table = annotate_paths(
        df["path"].astype(str).tolist(),
        list(cfg["annotators"]),
        n_frames=int(cfg.get("n_frames", 2)),
        workers=int(cfg.get("workers") or 0) or None,
        cache_dir=cfg.get("cache_dir"),
    )
    Path(cfg["out"]).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(cfg["out"], index=False)
    n_err = int((table["error"].fillna("") != "").sum())
    print(f"annotate: {len(table)} items x {len(cfg['annotators'])} annotators, {n_err} items with an error")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("annotate", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
