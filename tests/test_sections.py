"""The typed params sections (data stages, model, train, evaluate): defaults equal params.yaml,
unknown keys and wrong types are errors that name the key, and a partial section means what
params.yaml means."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from qualitune.config import load_params
from qualitune.errors import QualituneError
from qualitune.sections import (
    DATA_SECTIONS,
    AnnotateSettings,
    EvaluateSettings,
    IngestSettings,
    LabelsSettings,
    ModelSettings,
    PmodSettings,
    ValidateSettings,
)
from qualitune.training.settings import (
    STAGE_KEYS,
    TrainSection,
    TrainSettings,
    TrainStageSettings,
    VitalSettings,
)
from qualitune.vlm.scoring import MAX_INVALID_MASS
from qualitune.vlm.trainable import LoraSettings

PARAMS = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
SECTIONS = (*DATA_SECTIONS, ModelSettings, EvaluateSettings)


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.SECTION)
def test_defaults_are_params_yaml(cls):
    # every key of the section is a field (no unknown key) and every default is params.yaml's value
    assert set(PARAMS[cls.SECTION]) == {f.name for f in dataclasses.fields(cls)}
    assert cls.from_params(PARAMS) == cls() == cls.from_params({})


@pytest.mark.parametrize("cls", (*SECTIONS, TrainSection), ids=lambda c: getattr(c, "SECTION", "train"))
def test_unknown_key_is_refused_with_the_known_ones(cls):
    with pytest.raises(QualituneError, match=r"unknown key\(s\) in params \w+: \['typo_key'\]; known"):
        name = getattr(cls, "SECTION", "train")
        cls.from_params({name: {**PARAMS[name], "typo_key": 1}})


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
        ("model", {"max_pixels": 1000}, r"0 < min_pixels <= max_pixels, got 3136, 1000"),
        ("model", {"video_mode": "clip"}, r"model.video_mode must be one of \['frames', 'video'\]"),
        ("model", {"feature_cache": 0}, r"model.feature_cache must be str or null, got 0"),
        ("evaluate", {"modes": ["beam"]}, r"evaluate.modes\[0\] must be one of \['expected', 'greedy'\]"),
        ("evaluate", {"batch_size": 0}, r"evaluate.batch_size >= 1"),
        ("evaluate", {"instability": {"repeats": 1}}, r"repeats >= 2"),
        ("evaluate", {"lens": {"sampel": 3}}, r"unknown key\(s\) in params evaluate.lens: \['sampel'\]"),
        ("train", {"lr": "fast"}, r"train.lr must be a finite number, got 'fast'"),
        ("train", {"lora": {"r": 8.5}}, r"train.lora.r must be an integer"),
        ("train", {"vital": {"kl_wieght": 1}}, r"unknown key\(s\) in params train.vital"),
        ("train", {"val_modes": ["beam"]}, r"train.val_modes\[0\] must be one of \['expected', 'greedy'\]"),
        ("train", {"val_modes": []}, r"train.val_modes must be a non-empty list"),
        ("train", {"val_modes": "greedy"}, r"train.val_modes must be a list"),
        ("train", {"resume": "yes"}, r"train.resume must be true or false"),
        ("train", {"max_invalid_mass": 0}, r"train.max_invalid_mass must be in \(0, 1\]"),
        ("train", {"pretrain": {"enabled": True, "epoch": 1}}, r"unknown keys in params train.pretrain"),
    ],
)
def test_bad_values_name_the_key(section, override, message):
    cls = {c.SECTION: c for c in SECTIONS} | {"train": TrainSection}
    cls = cls[section]
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


def test_train_defaults_are_params_yaml():
    """`TrainSettings()` is the pipeline's recipe: the loop's, LoRA's, VITAL's and the stage's
    defaults are params.yaml's train values, and a train section left out means the same."""
    train = PARAMS["train"]
    loop_keys = {f.name for f in dataclasses.fields(TrainSettings)}
    assert set(train) == loop_keys | set(STAGE_KEYS) and not loop_keys & set(STAGE_KEYS)
    assert set(train["lora"]) | {"extra"} == {f.name for f in dataclasses.fields(LoraSettings)}
    assert set(train["vital"]) == {f.name for f in dataclasses.fields(VitalSettings)}
    full, empty = TrainSection.from_params(PARAMS), TrainSection.from_params({})
    assert full.loop == TrainSettings() == empty.loop
    assert full.loop.lora == LoraSettings() and full.loop.vital == VitalSettings()
    assert full.stage == TrainStageSettings() == empty.stage
    assert full.pretrain == empty.pretrain and full.pretrain.method == "vital"
    assert TrainStageSettings().max_invalid_mass == MAX_INVALID_MASS  # the scorer's own default


def test_train_section_coerces_types_and_keeps_the_pretrain_switch():
    s = TrainSection.from_params({"train": {"epochs": 3, "label_range": [1, 5], "val_modes": ["greedy"]}})
    assert s.loop.epochs == 3.0 and isinstance(s.loop.epochs, float) and s.loop.label_range == (1, 5)
    assert s.stage.val_modes == ("greedy",) and s.stage.out == "models/scorer"
    off = TrainSection.from_params({"train": {"pretrain": {**PARAMS["train"]["pretrain"], "enabled": False}}})
    assert off.pretrain is None and off.loop == TrainSettings()
    assert TrainSettings.from_params({"packing": True, "lora": {"target_modules": ["q_proj"]}}).lora == (
        LoraSettings(target_modules=("q_proj",))
    )


def test_every_params_section_has_a_typed_reader_whose_defaults_are_params_yaml():
    """The sections whose classes live beside their code (demo, mlflow, register, tune, serve) hold
    the same promise: an absent section means what params.yaml says. Together with the classes
    above, every section of params.yaml has one typed reader."""
    from qualitune.demo.build import DemoConfig
    from qualitune.gate import RegisterSettings
    from qualitune.search import TuneSettings
    from qualitune.serving.settings import ServeSettings
    from qualitune.tracking import tracking_settings

    assert DemoConfig.from_section(PARAMS["demo"]) == DemoConfig.from_section({})
    assert tracking_settings(PARAMS) == tracking_settings({})
    for cls in (RegisterSettings, TuneSettings, ServeSettings):
        assert cls.from_params(PARAMS) == cls.from_params({}), cls.__name__
    typed = {c.SECTION for c in SECTIONS} | {"demo", "mlflow", "train", "register", "tune", "serve"}
    assert set(PARAMS) == typed


def test_value_reads_one_key_typed_with_its_default_and_nothing_else():
    """`Section.value`: a stage's read of one key of another stage's section (tests/test_dvc_params.py
    holds the stages to it). Absent key or section -> the field default; a wrong type is named."""
    from qualitune.sections import IngestSettings, ModelSettings, TrainStageSettings

    assert IngestSettings.value({}, "out") == IngestSettings().out
    assert (
        IngestSettings.value({"ingest": {"out": "data/m.parquet", "seed": "not read"}}, "out")
        == "data/m.parquet"
    )
    assert TrainStageSettings.value({"train": {"lr": 1.0}}, "pretrain") == TrainStageSettings().pretrain
    assert ModelSettings.value({"model": {"feature_cache": None}}, "feature_cache") is None
    with pytest.raises(QualituneError, match=r"ingest\.out must be"):
        IngestSettings.value({"ingest": {"out": 3}}, "out")
    with pytest.raises(QualituneError, match="params ingest must be a mapping"):
        IngestSettings.value({"ingest": ["out"]}, "out")
    with pytest.raises(KeyError, match="no key 'outt'"):
        IngestSettings.value({}, "outt")
