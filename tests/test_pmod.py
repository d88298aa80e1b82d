"""PMOD: train-only monotone calibration, Gaussian level distributions, descriptions, reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qualitune.pmod import (
    LEVEL_COLUMNS,
    Descriptor,
    compute_pmod,
    correlation_report,
    describe,
    fit_calibration,
    level_probabilities,
)


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, n)
    manifest = pd.DataFrame(
        {
            "path": [f"/x/{i}.png" for i in range(n)],
            "mos_norm": mos,
            "split": np.where(np.arange(n) % 5 == 0, "test", "train"),
        }
    )
    ann = pd.DataFrame(
        {
            "path": manifest["path"],
            "good_up": 10 * mos + rng.normal(0, 2, n),  # higher = better
            "good_down": 100 - 20 * mos + rng.normal(0, 8, n),  # lower = better (like NIQE)
            "error": "",
        }
    )
    return manifest, ann


def test_level_probabilities_sum_to_one_and_peak_at_mean():
    p = level_probabilities(np.array([1.0, 3.0, 4.6, 5.0]), np.array([0.0, 0.5, 0.3, 2.0]))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert p.argmax(axis=1).tolist()[:3] == [0, 2, 4]
    # a wider spread puts more mass away from the peak
    narrow, wide = level_probabilities(np.array([3.0, 3.0]), np.array([0.3, 1.5]))
    assert wide[2] < narrow[2]


def test_isotonic_calibration_is_monotone_in_the_declared_direction():
    rng = np.random.default_rng(1)
    s = rng.normal(size=300)
    mos = np.clip(3 - s + rng.normal(0, 0.3, 300), 1, 5)
    cal = fit_calibration("down", s, mos, higher_is_better=False)
    grid = np.linspace(-4, 4, 50)
    out = cal.apply(grid)
    assert np.all(np.diff(out) <= 1e-12) and out.min() >= 1 and out.max() <= 5
    assert cal.method == "isotonic"
    rank = fit_calibration("down", s, None, higher_is_better=False)
    assert rank.method == "rank" and np.all(np.diff(rank.apply(grid)) <= 1e-12)
    np.testing.assert_allclose(rank.apply([s.min() - 1, s.max() + 1]), [5.0, 1.0])


def test_compute_pmod_uses_train_only_and_tracks_mos():
    manifest, ann = _data()
    directions = {"good_up": True, "good_down": False}
    res = compute_pmod(manifest, ann, directions)
    f = res.frame
    np.testing.assert_allclose(f[list(LEVEL_COLUMNS)].sum(axis=1), 1.0, atol=1e-9)
    assert stats.spearmanr(f["pmod_mean"], f["mos_norm"]).statistic > 0.9
    # changing test-split MOS must not change the calibration (fitted on train only)
    m2 = manifest.copy()
    m2.loc[m2["split"] == "test", "mos_norm"] = 1.0
    res2 = compute_pmod(m2, ann, directions)
    np.testing.assert_allclose(res2.frame["pmod_mean"], f["pmod_mean"])
    rep = correlation_report(f, directions)
    assert rep["test"]["good_down"]["srcc"] > 0.8  # sign made "higher = better"
    assert set(rep) == {"train", "test"}


def test_unscored_items_get_nan_not_a_guess():
    manifest, ann = _data(50)
    ann.loc[3, ["good_up", "good_down"]] = np.nan
    res = compute_pmod(manifest, ann, {"good_up": True, "good_down": False})
    row = res.frame.iloc[3]
    assert np.isnan(row["pmod_mean"]) and np.isnan(row["pmod_p1"]) and res.n_unscored == 1
    # one annotator missing: the other still gives a distribution
    ann.loc[4, "good_up"] = np.nan
    res = compute_pmod(manifest, ann, {"good_up": True, "good_down": False})
    assert res.frame.iloc[4]["pmod_n"] == 1 and np.isfinite(res.frame.iloc[4]["pmod_mean"])


def test_missing_annotation_rows_or_columns_raise():
    manifest, ann = _data(20)
    with pytest.raises(ValueError, match="no annotation row"):
        compute_pmod(manifest, ann.iloc[:-1], {"good_up": True})
    with pytest.raises(ValueError, match="lacks columns"):
        compute_pmod(manifest, ann, {"nope": True})


def test_describe_words_follow_severity():
    frame = pd.DataFrame({"ann_blur": np.arange(100, dtype=float)})
    text = describe(
        frame, [Descriptor("blur", True, ("sharp", "mild blur", "strong blur"))], np.ones(100, bool)
    )
    assert text[0] == "sharp" and text[80] == "mild blur" and text[99] == "strong blur"


def test_pmod_cli_round_trip(tmp_path):
    """`qualitune pmod` on a real manifest file and an annotation CSV with real annotator names."""
    import json

    from qualitune.cli import main as cli_main
    from qualitune.manifest import make_manifest, read_manifest, write_manifest

    manifest, ann = _data(60)
    frame = manifest.assign(name=[f"{i}.png" for i in range(60)], mos=manifest["mos_norm"])
    m = make_manifest(frame.drop(columns=["mos_norm"]), dataset="t", scale=(1.0, 5.0))
    write_manifest(m, tmp_path / "m.parquet")
    ann.rename(columns={"good_up": "sharpness", "good_down": "blur"}).to_csv(tmp_path / "a.csv", index=False)
    rc = cli_main(
        ["pmod", str(tmp_path / "m.parquet"), "--annotations", str(tmp_path / "a.csv"), "--out", str(tmp_path / "p.parquet"),
         "--metrics", str(tmp_path / "metrics.json")]
    )  # fmt: skip
    assert rc == 0
    out = read_manifest(tmp_path / "p.parquet")
    assert {"pmod_mean", "pmod_std", "pmod_p1", "pmod_p5", "description"} <= set(out.columns)
    assert out["description"].str.len().gt(0).all()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pmod"]["test"]["pmod_mean"]["srcc"] > 0.8
