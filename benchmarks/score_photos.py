"""Images per second of a trained scorer on real photos, as `qualitune score` runs it.

    python benchmarks/score_photos.py --model models/compact-biq2021 --images data/biq2021-heldout/images \\
        [--n 96] [--batch-size 16] [--mode expected] [--threads 2]

Times `Scorer.score_paths` (file decoding, resizing, the vision encoder, the decoder) on `--n`
photos after one untimed warm-up batch on other photos; the compact backend's feature cache is
cleared first, so every timed photo goes through the encoder. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="scorer folder or models:/name@alias")
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--mode", default="expected", choices=["expected", "greedy"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    from qualitune.scorer import Scorer
    from qualitune.vlm.inputs import _unwrap

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
    t0 = time.perf_counter()
    scorer = Scorer.load(args.model)
    load_s = time.perf_counter() - t0
    scorer.score_paths(paths[-args.batch_size :], mode=args.mode, batch_size=args.batch_size)  # warm-up
    visual = getattr(_unwrap(scorer.model).model, "visual", None)
    if hasattr(visual, "clear_cache"):
        visual.clear_cache()
    t0 = time.perf_counter()
    run = scorer.score_paths(paths[: args.n], mode=args.mode, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    out = {
        "model": args.model,
        "mode": args.mode,
        "images": args.n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "seconds": round(seconds, 2),
        "images_per_s": round(args.n / seconds, 2),
        "load_seconds": round(load_s, 1),
        "failed": run.n_failed,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
