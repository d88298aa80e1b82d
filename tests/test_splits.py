"""The seeded splits (`qualitune.splits`): reproducible, grouped where asked, each variant as documented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qualitune.splits import assign_splits, grouped_quota_split, holdout_rows, seeded_split

RATIOS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_seeded_split_is_per_key_so_adding_items_moves_none() -> None:
    ids = [f"item{i}" for i in range(200)]
    split = seeded_split(ids, RATIOS, seed=7)
    assert list(seeded_split(ids + ["new1", "new2"], RATIOS, seed=7)[:200]) == list(split)
    assert set(split) == {"train", "val", "test"}
    assert list(seeded_split(ids, RATIOS, seed=8)) != list(split)
    groups = [f"g{i // 5}" for i in range(200)]
    grouped = seeded_split(ids, RATIOS, seed=7, groups=groups)
    assert (pd.Series(grouped).groupby(groups).nunique() == 1).all()
    with pytest.raises(ValueError, match="unknown split names"):
        seeded_split(ids, {"train": 0.5, "holdout": 0.5}, seed=0)


def test_quota_split_fills_every_split_and_keeps_groups_together() -> None:
    groups = [f"g{i // 4}" for i in range(32)]  # 8 groups of 4 items
    split = grouped_quota_split(groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=42)
    by_group = pd.Series(split).groupby(groups).nunique()
    assert (by_group == 1).all()
    per_split = {
        s: len({g for g, x in zip(groups, split, strict=True) if x == s}) for s in ("train", "val", "test")
    }
    assert per_split == {"train": 6, "val": 1, "test": 1}
    assert list(split) == list(
        grouped_quota_split(groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=42)
    )


def test_holdout_rows_is_a_fixed_size_seeded_mask() -> None:
    mask = holdout_rows(50, {"n": 7, "seed": 3})
    assert mask.sum() == 7 and list(mask) == list(holdout_rows(50, {"n": 7, "seed": 3}))
    with pytest.raises(ValueError, match="holdout.n"):
        holdout_rows(5, {"n": 5})
    with pytest.raises(ValueError, match="takes n and seed"):
        holdout_rows(5, {"n": 1, "size": 2})


def test_assign_splits_keeps_official_splits_and_carves_val_from_train() -> None:
    ids = np.asarray([f"x{i}" for i in range(100)], dtype=object)
    official = pd.Series(["train"] * 80 + ["test"] * 20, dtype="object")
    split, source = assign_splits(ids, official, None, RATIOS, 0.1, 42)
    assert (split[80:] == "test").all() and set(split[:80]) == {"train", "val"}
    assert source == "official; val carved from train (0.1)"
    none = pd.Series([pd.NA] * 100, dtype="object")
    split, source = assign_splits(ids, none, None, RATIOS, 0.1, 42)
    assert source == "seeded" and list(split) == list(seeded_split(ids, RATIOS, 42))
    with pytest.raises(ValueError, match="official split"):
        assign_splits(ids, official, None, RATIOS, 0.1, 42, holdout={"n": 5})
