"""Metric functions against scipy on hand-made arrays (golden values)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qualitune.metrics import correlations, logistic4, logistic_fit

PRED = [1.2, 2.5, 2.4, 3.9, 4.1, 3.0, 1.8, 4.8]
MOS = [1.0, 2.2, 2.9, 3.5, 4.4, 3.1, 1.5, 4.9]


def test_correlations_equal_scipy_on_a_hand_made_array():
    m = correlations(PRED, MOS)
    assert m["srcc"] == pytest.approx(stats.spearmanr(PRED, MOS).statistic, abs=1e-12)
    assert m["plcc"] == pytest.approx(stats.pearsonr(PRED, MOS).statistic, abs=1e-12)
    assert m["krcc"] == pytest.approx(stats.kendalltau(PRED, MOS).statistic, abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((np.array(PRED) - np.array(MOS)) ** 2)))
    assert m["final"] == pytest.approx((m["srcc"] + m["plcc"]) / 2)
    # hand-computed: ranks of PRED are [1,4,3,6,7,5,2,8], of MOS [1,3,4,6,7,5,2,8] -> d^2 sum = 2
    assert m["srcc"] == pytest.approx(1 - 6 * 2 / (8 * (64 - 1)))


def test_logistic_fit_recovers_a_monotone_nonlinear_map():
    x = np.linspace(0, 10, 40)
    y = logistic4(x, 5.0, 1.0, 5.0, 1.5)
    m = correlations(x.tolist(), y.tolist())
    assert m["plcc"] < 0.99  # raw PLCC penalises the S-shape...
    assert m["plcc_logistic"] == pytest.approx(1.0, abs=1e-6)  # ...the fitted one does not
    assert m["srcc"] == pytest.approx(1.0)
    np.testing.assert_allclose(logistic_fit(x, y), y, atol=1e-5)


def test_missing_predictions_are_excluded_and_counted():
    m = correlations([None, *PRED[1:]], MOS)
    assert m["n"] == 7 and m["n_missing"] == 1
    assert m["srcc"] == pytest.approx(stats.spearmanr(PRED[1:], MOS[1:]).statistic)


def test_constant_predictions_give_nan_not_zero():
    m = correlations([3.0] * 5, [1, 2, 3, 4, 5])
    assert math.isnan(m["srcc"]) and math.isnan(m["final"])
    with pytest.raises(ValueError, match="NaN"):
        correlations([1, 2, 3], [1, float("nan"), 3])


@pytest.mark.parametrize("n", [3, 4])
def test_too_few_items_for_the_logistic_fit_keep_the_rank_metrics(n):
    m = correlations(PRED[:n], MOS[:n])  # scipy refuses 4 parameters on <= 4 points: no crash, NaN
    assert m["srcc"] == pytest.approx(stats.spearmanr(PRED[:n], MOS[:n]).statistic)
    assert math.isnan(m["plcc_logistic"]) and math.isnan(m["rmse_logistic"])
    with pytest.raises(ValueError, match="at least 5 items"):
        logistic_fit(PRED[:n], MOS[:n])


def test_logistic_fit_is_increasing_and_never_flips_the_sign_of_plcc():
    """Regression: plcc_logistic was +0.241 where PLCC was -0.077 (the fit had turned decreasing)."""
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 200)
    for noise in (0.3, 3.0):  # clearly and weakly anti-correlated predictions
        pred = -mos + rng.normal(0, noise, mos.shape)
        m = correlations(pred, mos)
        assert m["plcc"] < 0
        assert math.isnan(m["plcc_logistic"]) or m["plcc_logistic"] <= 0
        fitted = logistic_fit(pred, mos)
        order = np.argsort(pred)
        assert (np.diff(fitted[order]) >= -1e-9).all()  # monotone non-decreasing in the prediction
