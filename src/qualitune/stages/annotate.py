"""DVC stage `annotate`: every validated item scored by the machine annotators (params section `annotate`).

Scores are cached per file content outside the DVC outputs (`annotate.cache_dir`), so adding items to a
dataset re-scores only the new ones even though DVC reruns the stage.
"""

from __future__ import annotations

import argparse
import sys

from qualitune.config import load_params, section


def main(argv: list[str] | None = None) -> int:
    from qualitune.annotate import annotate_paths
    from qualitune.manifest import read_manifest

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = section(params, "annotate")
    df = read_manifest(section(params, "validate")["out"])
    table = annotate_paths(
        df["path"].astype(str).tolist(),
        list(cfg["annotators"]),
        n_frames=int(cfg.get("n_frames", 2)),
        workers=int(cfg.get("workers") or 0) or None,
        cache_dir=cfg.get("cache_dir"),
    )
    from pathlib import Path

    Path(cfg["out"]).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(cfg["out"], index=False)
    n_err = int((table["error"].fillna("") != "").sum())
    print(f"annotate: {len(table)} items x {len(cfg['annotators'])} annotators, {n_err} items with an error")
    return 0


if __name__ == "__main__":
    sys.exit(main())
