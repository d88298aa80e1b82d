"""DVC stage `annotate`: every validated item scored by the machine annotators (params section `annotate`).

Scores are cached per file content outside the DVC outputs (`annotate.cache_dir`), so adding items to a
dataset re-scores only the new ones even though DVC reruns the stage.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qualitune.sections import AnnotateSettings, ValidateSettings
from qualitune.stages import stage_main


def run_stage(params: dict) -> int:
    from qualitune.annotate import annotate_paths
    from qualitune.manifest import read_manifest

    s = AnnotateSettings.from_params(params)
    df = read_manifest(ValidateSettings.value(params, "out"))
    paths = df["path"].astype(str).tolist()
    kw = {"n_frames": s.n_frames, "workers": s.workers or None, "cache_dir": s.cache_dir}
    table = annotate_paths(paths, list(s.annotators), **kw)
    Path(s.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(s.out, index=False)
    n_err = int((table["error"].fillna("") != "").sum())
    print(f"annotate: {len(table)} items x {len(s.annotators)} annotators, {n_err} items with an error")
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main("annotate", run_stage, argv)


if __name__ == "__main__":
    sys.exit(main())
