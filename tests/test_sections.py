"""The data stages' typed params sections: defaults equal params.yaml, unknown keys and wrong types
are errors that name the key, and a partial section means what params.yaml means."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qualitune.config import load_params
from qualitune.errors import QualituneError
from qualitune.sections import (
    DATA_SECTIONS,
    AnnotateSettings,
    IngestSettings,
    LabelsSettings,
    PmodSettings,
    ValidateSettings,
)

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")


@pytest.mark.parametrize("cls", DATA_SECTIONS, ids=lambda c: c.SECTION)
def test_defaults_are_params_yaml(cls):
    # every key of the section is a field (no unknown key) and every default is params.yaml's value
    assert set(PARAMS[cls.SECTION]) == {f.name for f in dataclasses.fields(cls)}
    assert cls.from_params(PARAMS) == cls() == cls.from_params({})


@pytest.mark.parametrize("cls", DATA_SECTIONS, ids=lambda c: c.SECTION)
def test_unknown_key_is_refused_with_the_known_ones(cls):
    with pytest.raises(
        QualituneError, match=rf"unknown key\(s\) in params {cls.SECTION}: \['typo_key'\]; known"
    ):
        cls.from_params({cls.SECTION: {**PARAMS[cls.SECTION], "typo_key": 1}})


@pytest.mark.parametrize(
    ("section", "override", "message"),
    [
        ("pmod", {"min_std": "wide"}, r"pmod.min_std must be a finite number, got 'wide'"),
        ("pmod", {"min_std": float("nan")}, r"pmod.min_std must be a finite number"),
        ("pmod", {"calibration": "linear"}, r"pmod.calibration must be one of \['isotonic', 'rank'\]"),
        ("labels", {"range": [10]}, r"labels.range must be a list of 2 values"),
        ("labels", {"range": [50, 10]}, r"labels.range must be \[lo, hi\] with lo < hi"),
        ("labels", {"range": [1.5, 5]}, r"labels.range\[0\] must be an integer"),
        ("validate", {"check_media": "yes"}, r"validate.check_media must be true or false"),
        ("validate", {"max_fail_share": 2}, r"validate.max_fail_share must be in \[0, 1\]"),
        ("annotate", {"annotators": []}, r"annotate.annotators is empty"),
        ("annotate", {"n_frames": True}, r"annotate.n_frames must be an integer"),
        ("ingest", {"options": ["labels.csv"]}, r"ingest.options must be a mapping"),
        ("ingest", {"holdout": 500}, r"ingest.holdout must be dict or null, got 500"),
        ("ingest", {"val_from_train": 1.0}, r"ingest.val_from_train must be in \[0, 1\)"),
    ],
)
def test_bad_values_name_the_key(section, override, message):
    cls = {c.SECTION: c for c in DATA_SECTIONS}[section]
    with pytest.raises(QualituneError, match=message):
        cls.from_params({section: {**PARAMS[section], **override}})


def test_partial_sections_keep_the_other_defaults_and_coerce_types():
    s = PmodSettings.from_params({"pmod": {"min_std": 1, "exclude": ["niqe"], "metrics": None}})
    assert s.min_std == 1.0 and isinstance(s.min_std, float)
    assert s.exclude == ("niqe",) and s.metrics is None and s.out == "data/pmod.parquet"
    assert LabelsSettings.from_params({"labels": {"range": [0, 100]}}).range == (0, 100)
    ann = AnnotateSettings.from_params({"annotate": {"annotators": ["niqe"], "cache_dir": None}})
    assert ann.annotators == ("niqe",) and ann.cache_dir is None and ann.n_frames == 2
    ing = IngestSettings.from_params({"ingest": {"format": "koniq", "holdout": {"n": 500, "seed": 0}}})
    assert ing.holdout == {"n": 500, "seed": 0} and ing.seed == 42
    assert ValidateSettings.from_params({"validate": None}) == ValidateSettings()


def test_a_section_that_is_not_a_mapping_is_refused():
    with pytest.raises(QualituneError, match="params pmod must be a mapping, got list"):
        PmodSettings.from_params({"pmod": ["isotonic"]})
