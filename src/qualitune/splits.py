"""Seeded train/val/test splits: every split the project draws, in one place.

All of them are reproducible from a seed and the items' names alone (no global random state), and
none is ever merged into another: each variant exists for a reason, and changing one would move
items between splits of manifests and demo data already built (their md5s are in `dvc.lock`).

- `seeded_split`: per item (or per group), an independent hash of (seed, key) against the
  cumulative ratios. An item keeps its split when others are added or removed, so growing a dataset
  never moves an old training item into test. The ratios hold only on average: with few groups a
  split can come out empty. Used by ingest for datasets without an official split.
- `grouped_quota_split`: whole groups ordered by the same hash and cut at the cumulative ratios, so
  the shares are as close as whole groups allow and no positive split is left empty. The price is
  stability: adding a group can move others. Used by the demo dataset, whose few references (one
  per photo crop or video window) would often leave `seeded_split`'s val or test empty.
- `holdout_rows`: a fixed number of rows by a seeded permutation, for a fixed-size test set
  (`ingest.holdout`) that does not depend on the ratios.
- `assign_splits`: ingest's policy on top of these: official splits where a dataset gives them,
  a holdout and seeded splits elsewhere, and val carved out of an official train split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError
from qualitune.manifest import SPLITS

DEFAULT_SPLIT_RATIOS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}


def stable_hash(text: str) -> int:
    """The first 8 bytes of sha256(text) as an unsigned integer: the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _stable_rank(ids: Iterable[str], seed: int) -> np.ndarray:
    """A per-item pseudo-random number in [0, 1) from a hash of (seed, id).

    Unlike a permuted index, an item keeps its split when other items are added or removed, so
    adding data to a dataset never moves an old training item into the test split.
    """
    return np.asarray([stable_hash(f"{seed}:{item}") / 2**64 for item in ids], dtype=np.float64)


def seeded_split(
    ids: Iterable[str], ratios: Mapping[str, float], seed: int, groups: Iterable[str] | None = None
) -> np.ndarray:
    """Assign each id to a split with the given ratios (normalised to sum 1), reproducibly.

    With `groups` (e.g. KADID's reference image), all items of a group share a split, so the same
    content never appears in both train and test.
    """
    ids = list(ids)
    names = [s for s in ratios if ratios[s] > 0]
    if not names:
        raise QualituneError(f"split ratios must have a positive entry, got {dict(ratios)}")
    unknown = set(names) - set(SPLITS)
    if unknown:
        raise QualituneError(f"unknown split names {sorted(unknown)}; use {SPLITS}")
    w = np.asarray([float(ratios[s]) for s in names])
    edges = np.cumsum(w / w.sum())
    keys = list(groups) if groups is not None else ids
    if len(keys) != len(ids):
        raise QualituneError("groups must have one entry per id")
    u = _stable_rank(keys, seed)
    idx = np.searchsorted(edges, u, side="right").clip(0, len(names) - 1)
    return np.asarray(names, dtype=object)[idx]


def grouped_quota_split(groups: Sequence[str], ratios: Mapping[str, float], seed: int) -> np.ndarray:
    """Seeded split by group that meets the ratios as closely as whole groups allow.

    `seeded_split` draws each group independently (stable when data is added), which with the
    demo's few groups (8-12 video windows) often leaves val or test empty. Here the distinct groups
    are ordered by the same seeded hash and cut at the cumulative ratios (largest remainder, and
    every positive split gets a group when there are enough), so all items of a group share a
    split and the result depends only on (seed, the set of groups).
    """
    names = [s for s in ratios if ratios[s] > 0]
    if not names or set(names) - set(SPLITS):
        raise QualituneError(f"split ratios need positive entries among {list(SPLITS)}, got {dict(ratios)}")
    uniq = sorted(set(groups), key=lambda g: (stable_hash(f"{seed}:{g}"), g))
    n = len(uniq)
    w = np.asarray([float(ratios[s]) for s in names])
    exact = w / w.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(names)):  # a positive split never ends up empty if it can be helped
        if counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    assign: dict[str, str] = {}
    start = 0
    for name, c in zip(names, counts, strict=True):
        for g in uniq[start : start + c]:
            assign[g] = name
        start += c
    return np.asarray([assign[g] for g in groups], dtype=object)


def holdout_rows(n_rows: int, holdout: Mapping[str, Any]) -> np.ndarray:
    """A boolean mask of `holdout["n"]` rows drawn by a seeded permutation of the label rows
    (`numpy.random.default_rng(holdout["seed"])`): a fixed-size test set, the same for the same
    label file whatever the other split settings."""
    unknown = sorted(set(holdout) - {"n", "seed"})
    if unknown:
        raise QualituneError(f"ingest.holdout takes n and seed, got also {unknown}")
    n = int(holdout.get("n", 0))
    if not 0 < n < n_rows:
        raise QualituneError(f"ingest.holdout.n must be between 1 and {n_rows - 1} (the label rows), got {n}")
    mask = np.zeros(n_rows, dtype=bool)
    mask[np.random.default_rng(int(holdout.get("seed", 0))).permutation(n_rows)[:n]] = True
    return mask


def assign_splits(
    ids: np.ndarray,
    official: pd.Series,
    groups: np.ndarray | None,
    ratios: Mapping[str, float],
    val_from_train: float,
    seed: int,
    holdout: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, str]:
    """(split per row, how it was drawn): official splits where given, seeded ones elsewhere; val
    carved from train when none is official.

    `official` holds each row's official split or NA; `groups` (or None) the content group of each
    row. With `holdout`, a fixed number of rows becomes the test split first (`holdout_rows`) and
    the ratios split the rest; only for datasets without an official split."""
    official = official.astype("object")
    has_official = official.notna().to_numpy()
    split = official.to_numpy(dtype=object).copy()
    source = "official" if has_official.all() else "seeded" if not has_official.any() else "official+seeded"
    need = ~has_official
    if holdout:
        if has_official.any():
            raise QualituneError(
                "ingest.holdout carves a test split out of a dataset without one, but this dataset has "
                "an official split: remove ingest.holdout (its official test split is used)"
            )
        held = holdout_rows(len(split), holdout)
        split[held] = "test"
        need = need & ~held
        source = f"holdout of {int(held.sum())} (seed {int(holdout.get('seed', 0))}) + seeded"
    if need.any():
        split[need] = seeded_split(ids[need], ratios, seed, groups[need] if groups is not None else None)
    is_train = has_official & (split == "train")
    if (
        val_from_train > 0
        and has_official.any()
        and not (split[has_official] == "val").any()
        and is_train.any()
    ):
        carve = {"train": 1.0 - val_from_train, "val": val_from_train}
        split[is_train] = seeded_split(
            ids[is_train], carve, seed, groups[is_train] if groups is not None else None
        )
        source += f"; val carved from train ({val_from_train:g})"
    return split, source
