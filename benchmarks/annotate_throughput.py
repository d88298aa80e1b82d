"""Throughput of the machine annotators at 512x384 (images/s).

Single process per annotator, then the parallel batch runner with all annotators on all cores.
Uses real photos: BIQ2021 subset images beside the project if present (centre-cropped/resized to
512x384), else scikit-image's colour photos. Prints a table, then one line of JSON.

    python benchmarks/annotate_throughput.py [--quick] [--n N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from qualitune.annotate import annotate_paths
from qualitune.annotators import available_annotators, get_annotator

W, H = 512, 384


def _to_512x384(img: Image.Image) -> np.ndarray:
    img = img.convert("RGB")
    scale = max(W / img.width, H / img.height)
    img = img.resize((max(W, round(img.width * scale)), max(H, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - W) // 2, (img.height - H) // 2
    return np.asarray(img.crop((left, top, left + W, top + H)))


def load_photos(n: int) -> tuple[list[np.ndarray], str]:
    biq = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "biq2021-train-subset" / "images"
    if biq.is_dir():
        files = sorted(biq.iterdir())[:n]
        return [_to_512x384(Image.open(f)) for f in files], f"BIQ2021 subset ({biq})"
    from skimage import data

    names = [
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "immunohistochemistry",
        "retina",
        "hubble_deep_field",
    ]
    base = [_to_512x384(Image.fromarray(getattr(data, k)())) for k in names]
    return [base[i % len(base)] for i in range(n)], "scikit-image colour photos"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 images per measurement")
    ap.add_argument("--n", type=int, default=None, help="images per measurement (default 32, quick 8)")
    args = ap.parse_args(argv)
    n = args.n or (8 if args.quick else 32)
    photos, source = load_photos(n)
    results: dict[str, float] = {}
    print(f"{len(photos)} photos at {W}x{H} from {source}; {os.cpu_count()} cores")
    print(f"{'annotator':<16}{'images/s':>12}")
    for name in available_annotators():
        ann = get_annotator(name)
        ann.score(photos[0])  # warm-up: model loading is not throughput
        t0 = time.perf_counter()
        for img in photos:
            ann.score(img)
        results[name] = len(photos) / (time.perf_counter() - t0)
        print(f"{name:<16}{results[name]:>12.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, img in enumerate(photos):
            p = Path(tmp) / f"{i:04d}.png"
            Image.fromarray(img).save(p)
            paths.append(p)
        t0 = time.perf_counter()
        df = annotate_paths(paths, available_annotators(), workers=os.cpu_count())
        elapsed = time.perf_counter() - t0
    batch = len(paths) / elapsed
    print(
        f"{'batch (all, ' + str(os.cpu_count()) + ' proc)':<16}{batch:>12.1f}   errors: {(df['error'] != '').sum()}"
    )
    print(
        json.dumps(
            {
                "n": len(photos),
                "size": [W, H],
                "cores": os.cpu_count(),
                "source": source,
                "single_process_images_per_s": {k: round(v, 2) for k, v in results.items()},
                "batch_all_annotators_images_per_s": round(batch, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
