"""DVC stage `pmod`: annotator scores → calibrated machine opinion distributions + descriptions.

Writes the training manifest (labels + PMOD + descriptions), the calibrations, and as DVC metrics and
plots the SRCC/PLCC of each annotator and of the PMOD mean against MOS per split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from qualitune.config import load_params, section


def main(argv: list[str] | None = None) -> int:
    from qualitune.annotators import get_annotator
    from qualitune.manifest import manifest_metadata, read_manifest, write_manifest
    from qualitune.pmod import DEFAULT_DESCRIPTORS, compute_pmod, correlation_report, describe

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg = section(params, "pmod")
    ann_cfg = section(params, "annotate")
    labeled_path = section(params, "labels")["out"]
    manifest = read_manifest(labeled_path)
    annotations = pd.read_csv(ann_cfg["out"], keep_default_na=True)
    names = [n for n in ann_cfg["annotators"] if n not in set(cfg.get("exclude", []))]
    directions = {n: bool(get_annotator(n).higher_is_better) for n in names}
    method = cfg.get("calibration", "isotonic")
    if method not in ("isotonic", "rank"):
        raise ValueError(f"pmod.calibration must be 'isotonic' or 'rank', got {method!r}")
    res = compute_pmod(manifest, annotations, directions, min_std=float(cfg.get("min_std", 0.25)), use_mos=method == "isotonic")
    frame = res.frame
    train = (frame["split"] == "train").to_numpy()
    frame["description"] = describe(frame, DEFAULT_DESCRIPTORS, train)
    write_manifest(frame, cfg["out"], manifest_metadata(labeled_path) | {"pmod": {"calibration": method, "annotators": names}})

    report = correlation_report(frame, directions)
    metrics = {
        "pmod": {split: {k: {m: v[m] for m in ("srcc", "plcc")} for k, v in rows.items()} for split, rows in report.items()},
        "n_unscored": res.n_unscored,
    }
    _write_json(cfg["metrics"], metrics)
    _write_json(cfg["calibrations"], {n: c.to_dict() for n, c in res.calibrations.items()})
    rows = [
        {"split": s, "annotator": k, "srcc": v["srcc"], "plcc": v["plcc"], "n": v["n"]}
        for s, per in report.items()
        for k, v in per.items()
    ]
    _write_csv(cfg["plot_correlations"], pd.DataFrame(rows))
    scatter = frame[["item_id", "split", "mos_norm", "pmod_mean", "pmod_std"]]
    _write_csv(cfg["plot_scatter"], scatter[np.isfinite(scatter["pmod_mean"])])
    for split, per in report.items():
        line = ", ".join(f"{k} {v['srcc']:+.3f}" for k, v in per.items())
        print(f"pmod SRCC vs MOS [{split}]: {line}")
    return 0


def _write_json(path: str, obj: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _write_csv(path: str, df: pd.DataFrame) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


if __name__ == "__main__":
    sys.exit(main())
