"""Split one dataset root into a train root and a held-out root (symlinks, no copies).

    python benchmarks/split_root.py --root ../shared/datasets/biq2021-train-subset \\
        --train-out data/biq2021-train --heldout-out data/biq2021-heldout --heldout 500 --seed 0

Both outputs have the root's layout (`labels.csv` + `images/`), so `benchmarks/real_data.py` can
train on one and report held-out figures on the other without ever seeing those photos in
training. The split is a seeded permutation of the label rows; every row lands in exactly one
output, and a photo listed in `labels.csv` but missing on disk stops the split with its name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def split_root(root: Path, train_out: Path, heldout_out: Path, heldout: int, seed: int) -> tuple[int, int]:
    labels = pd.read_csv(root / "labels.csv")
    if "image_name" not in labels.columns:
        raise ValueError(f"{root / 'labels.csv'} has no image_name column (columns: {list(labels.columns)})")
    missing = [n for n in labels["image_name"] if not (root / "images" / n).is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} listed photos are missing under {root / 'images'}, e.g. {missing[0]!r}"
        )
    if not 0 < heldout < len(labels):
        raise ValueError(f"--heldout must be between 1 and {len(labels) - 1}, got {heldout}")
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = {
        heldout_out: labels.iloc[np.sort(order[:heldout])],
        train_out: labels.iloc[np.sort(order[heldout:])],
    }
    for out, rows in parts.items():
        (out / "images").mkdir(parents=True, exist_ok=True)
        rows.to_csv(out / "labels.csv", index=False)
        for name in rows["image_name"]:
            link = out / "images" / name
            if not link.exists():
                link.symlink_to((root / "images" / name).resolve())
    return len(parts[train_out]), len(parts[heldout_out])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--train-out", required=True, type=Path)
    p.add_argument("--heldout-out", required=True, type=Path)
    p.add_argument("--heldout", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        n_train, n_held = split_root(args.root, args.train_out, args.heldout_out, args.heldout, args.seed)
    except ValueError as exc:
        print(f"split_root: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.train_out}: {n_train} photos; {args.heldout_out}: {n_held} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
