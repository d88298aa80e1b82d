"""Images per second of a trained scorer on real photos, as `qualitune score` runs it.

    python benchmarks/score_photos.py --model models/compact-biq2021 --images data/biq2021-heldout/images \\
        [--n 96] [--batch-size 16] [--mode expected] [--threads 2] [--repeats 3] \\
        [--config fp32-onnxruntime --config fp32-torchscript --config bf16-torchscript] \\
        [--labels data/biq2021-heldout/labels.csv]

Times `Scorer.score_paths` (file decoding, resizing, the vision encoder, the decoder) on `--n`
photos after one untimed warm-up batch on other photos; the compact backend's feature cache is
cleared before every timed pass, so every photo goes through the encoder.

Each `--config` is `<dtype>-<encoder runtime>` (fp32 | bf16, onnxruntime | torchscript): the
default compares the default path (fp32 on ONNX Runtime) with the previous one (fp32 TorchScript,
the baseline) and with bf16. Configurations are timed in turn, `--repeats` rounds, and each reports
its median, so a noisy shared machine slows all of them alike; `speedup` is against the first
configuration. Scores are compared with the first configuration's (mean and max absolute
difference, rank correlation), and with `--labels` (`image_name,mos`) against MOS (SRCC, PLCC).
Prints one JSON line per configuration, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
RUNTIMES = ("onnxruntime", "torchscript")


def _parse_config(text: str) -> tuple[str, str]:
    dtype, _, runtime = text.partition("-")
    if dtype not in DTYPES or runtime not in RUNTIMES:
        raise argparse.ArgumentTypeError(
            f"--config {text!r}: expected <{'|'.join(DTYPES)}>-<{'|'.join(RUNTIMES)}>, e.g. fp32-onnxruntime"
        )
    return dtype, runtime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="scorer folder or models:/name@alias")
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default="expected", choices=["expected", "greedy"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--config", action="append", type=_parse_config, help="repeatable; see above")
    p.add_argument("--labels", type=Path, help="image_name,mos CSV: also report SRCC/PLCC per configuration")
    args = p.parse_args(argv)
    configs = args.config or [("fp32", "torchscript"), ("fp32", "onnxruntime"), ("bf16", "torchscript")]
    from scipy.stats import pearsonr, spearmanr

    from qualitune.scorer import Scorer
    from qualitune.vlm.backends.compact.encoder_runtime import RUNTIME_ENV
    from qualitune.vlm.unwrap import unwrap_model

    torch.set_num_threads(args.threads)
    paths = sorted(
        str(x) for x in args.images.iterdir() if x.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")
    )
    if len(paths) < args.n + args.batch_size:
        print(
            f"score_photos: need {args.n + args.batch_size} photos in {args.images}, found {len(paths)}",
            file=sys.stderr,
        )
        return 2
    timed, warm = paths[: args.n], paths[-args.batch_size :]
    mos = None
    if args.labels is not None:
        import pandas as pd

        table = pd.read_csv(args.labels).set_index("image_name")["mos"]
        mos = np.array([float(table[Path(x).name]) for x in timed])

    scorers: dict[str, Scorer] = {}
    load_s: dict[str, float] = {}
    for dtype, _ in configs:
        if dtype not in scorers:
            t0 = time.perf_counter()
            scorers[dtype] = Scorer.load(args.model, dtype=DTYPES[dtype])
            load_s[dtype] = time.perf_counter() - t0

    def one_pass(dtype: str, runtime: str) -> tuple[float, list, int]:
        os.environ[RUNTIME_ENV] = runtime
        scorer = scorers[dtype]
        visual = getattr(unwrap_model(scorer.model).model, "visual", None)
        if hasattr(visual, "invalidate"):
            visual.invalidate()  # rebuild the encoder for this runtime (cached ONNX graphs load in ~0.1 s)
        scorer.score_paths(warm, mode=args.mode, batch_size=args.batch_size)
        if hasattr(visual, "clear_cache"):
            visual.clear_cache()
        t0 = time.perf_counter()
        run = scorer.score_paths(timed, mode=args.mode, batch_size=args.batch_size)
        return time.perf_counter() - t0, [r["score"] for r in run.results], run.n_failed

    seconds: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    scores: dict[tuple[str, str], list] = {}
    failed: dict[tuple[str, str], int] = {}
    for _ in range(args.repeats):
        for c in configs:
            s, sc, nf = one_pass(*c)
            seconds[c].append(s)
            scores[c], failed[c] = sc, nf
    base = configs[0]
    ref = np.array(scores[base], dtype=float)
    rows = []
    for c in configs:
        med = statistics.median(seconds[c])
        got = np.array(scores[c], dtype=float)
        ok = ~np.isnan(got) & ~np.isnan(ref)
        row = {
            "model": args.model,
            "config": "-".join(c),
            "mode": args.mode,
            "images": args.n,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "seconds_median": round(med, 2),
            "seconds_all": [round(x, 2) for x in seconds[c]],
            "images_per_s": round(args.n / med, 2),
            "speedup": round(statistics.median(seconds[base]) / med, 2),
            "load_seconds": round(load_s[c[0]], 1),
            "failed": failed[c],
            "vs_first": {
                "mean_abs_diff": round(float(np.abs(got[ok] - ref[ok]).mean()), 4),
                "max_abs_diff": round(float(np.abs(got[ok] - ref[ok]).max()), 4),
                "srcc": round(float(spearmanr(got[ok], ref[ok])[0]), 4),
            },
        }
        if mos is not None:
            keep = ~np.isnan(got)
            row["vs_mos"] = {
                "srcc": round(float(spearmanr(got[keep], mos[keep])[0]), 4),
                "plcc": round(float(pearsonr(got[keep], mos[keep])[0]), 4),
            }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| configuration | images/s (median) | speed-up | mean / max score diff | SRCC vs MOS |")
    print("|---|---|---|---|---|")
    for r in rows:
        vs = r.get("vs_mos", {}).get("srcc")
        print(
            f"| {r['config']} | {r['images_per_s']:.2f} | {r['speedup']:.2f}x | "
            f"{r['vs_first']['mean_abs_diff']:.3f} / {r['vs_first']['max_abs_diff']:.3f} | "
            f"{'' if vs is None else f'{vs:.3f}'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
