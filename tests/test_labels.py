"""Integer labels: monotone, inside the range, invertible within half a step (property tests)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qualitune.labels import LabelRange, add_labels, from_integer, to_decimal_text, to_integer, to_level

norms = st.floats(min_value=1.0, max_value=5.0, allow_nan=False)
ranges = st.sampled_from(
    [LabelRange(10, 50), LabelRange(1, 5), LabelRange(0, 100), LabelRange(0, 9), LabelRange(-3, 17)]
)


def test_paper_examples():
    # IOVQA: MOS on 1-5 rounded to one decimal, times 10
    assert to_integer([1.0, 3.46, 3.45, 3.44, 5.0]).tolist() == [10, 35, 35, 34, 50]
    assert to_integer([0.2, 7.0]).tolist() == [10, 50]  # clamped
    assert to_integer([3.0], LabelRange(0, 100)).tolist() == [50]
    assert to_integer([2.6], LabelRange(1, 5)).tolist() == [3]
    assert to_decimal_text([3.46, 1.0, 4.95]) == ["3.5", "1.0", "5.0"]
    assert to_level([1.0, 1.79, 1.81, 3.0, 4.2, 5.0]).tolist() == [0, 0, 1, 2, 4, 4]


@given(a=norms, b=norms, rng=ranges)
def test_monotone(a, b, rng):
    lo, hi = sorted((a, b))
    la, lb = to_integer([lo, hi], rng)
    assert la <= lb


@given(m=st.floats(min_value=-10, max_value=20, allow_nan=False), rng=ranges)
def test_inside_range(m, rng):
    (v,) = to_integer([m], rng)
    assert rng.lo <= v <= rng.hi


@given(m=norms, rng=ranges)
def test_inverse_within_half_step(m, rng):
    (v,) = to_integer([m], rng)
    (back,) = from_integer([v], rng)
    assert abs(back - m) <= rng.step / 2 + 1e-9


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        to_integer([3.0, float("nan")])
    with pytest.raises(ValueError, match="lo < hi"):
        LabelRange(5, 5)
    with pytest.raises(ValueError, match="integers"):
        LabelRange(1.5, 5)
    with pytest.raises(ValueError, match="format"):
        add_labels(pd.DataFrame({"mos_norm": [3.0]}), fmt="float")


def test_add_labels_columns():
    df = pd.DataFrame({"mos_norm": np.array([1.0, 2.5, 4.99])})
    out = add_labels(df)
    assert out["label_text"].tolist() == ["10", "25", "50"]
    assert out["level_word"].tolist() == ["bad", "poor", "excellent"]
    dec = add_labels(df, fmt="decimal")
    assert dec["label_text"].tolist() == ["1.0", "2.5", "5.0"]
