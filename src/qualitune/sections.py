"""Typed params sections: one frozen dataclass per `params.yaml` section the stages read.

Why: a stage that reads `cfg.get("min_std", 0.25)` carries a second default that can drift from
params.yaml, and a typo (`min_sdt`) silently falls back to it. Here every key a section may hold is a
field, an unknown key is an error that lists the known ones, a value of the wrong type is an error
that names the key, and the field defaults are params.yaml's own values (tests/test_sections.py
holds them equal), so a partial params mapping (a test's, an older params file) means what
params.yaml means. This module holds the data stages' sections, `model` and `evaluate`; the train,
mlflow, register, tune and serve sections have their settings classes beside the code that uses them
(`qualitune.training.settings.TrainSection`, `TrackingSettings`, `RegisterSettings`, `TuneSettings`,
`ServeSettings`, `DemoConfig`), built with the same `build`.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from qualitune.errors import QualituneError

S = TypeVar("S", bound="Section")


class Section:
    """Base of the section dataclasses: `from_params(params)` reads `params[SECTION]` (absent = the
    defaults), refusing unknown keys and values of the wrong type."""

    SECTION: ClassVar[str]

    @classmethod
    def from_params(cls: type[S], params: Mapping[str, Any]) -> S:
        return build(cls, params.get(cls.SECTION), cls.SECTION)

    @classmethod
    def value(cls, params: Mapping[str, Any], key: str) -> Any:
        """One key of the section, type-checked (its default when absent), reading nothing else of it.

        For a stage that needs one key of another stage's section (mostly its `out`): the stage then
        depends on that key alone, which is what its `dvc.yaml` params list says, so editing the other
        stage's settings does not rerun it (tests/test_dvc_params.py records and compares the reads).
        Checking the whole section is its own stage's job (`from_params`)."""
        known = {f.name: f for f in fields(cls) if f.init}
        if key not in known:
            raise KeyError(f"{cls.__name__} has no key {key!r}; keys: {sorted(known)}")
        raw = params.get(cls.SECTION)
        if raw is None or (isinstance(raw, Mapping) and key not in raw):
            f = known[key]
            return f.default_factory() if f.default is MISSING else f.default
        if not isinstance(raw, Mapping):
            raise QualituneError(f"params {cls.SECTION} must be a mapping, got {type(raw).__name__}")
        return _coerce(f"{cls.SECTION}.{key}", raw[key], get_type_hints(cls)[key])


def build(cls: type[S], raw: Any, where: str) -> S:
    """`cls(**raw)` with every key known and every value of its field's type (ints become floats
    where a float is expected, lists become tuples)."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        raise QualituneError(f"params {where} must be a mapping, got {type(raw).__name__}")
    names = [f.name for f in fields(cls) if f.init]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise QualituneError(f"unknown key(s) in params {where}: {unknown}; known: {names}")
    hints = get_type_hints(cls)
    return cls(**{k: _coerce(f"{where}.{k}", v, hints[k]) for k, v in raw.items()})


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, option)
            except QualituneError:
                continue
        raise QualituneError(f"{key} must be {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise QualituneError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if is_dataclass(tp):
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise QualituneError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise QualituneError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise QualituneError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value.strip():
            raise QualituneError(f"{key} must be a non-empty string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise QualituneError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise QualituneError(f"{key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise QualituneError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"{key}: no coercion for the field type {tp!r}")  # a bug in this module


def _describe(tp: Any) -> str:
    names = [getattr(a, "__name__", str(a)) for a in get_args(tp)]
    return " or ".join("null" if n == "NoneType" else n for n in names)


def _split_ratios() -> dict[str, float]:
    return {"train": 0.7, "val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class IngestSettings(Section):
    """Which dataset the pipeline runs on (`qualitune.ingest.ingest_to_file`)."""

    SECTION: ClassVar[str] = "ingest"
    format: str = "csv"
    root: str = "data/raw/demo"
    out: str = "data/manifest.parquet"
    options: dict[str, Any] = field(
        default_factory=lambda: {
            "labels": "labels.csv",
            "name_col": "name",
            "mos_col": "mos",
            "std_col": "mos_std",
            "split_col": "split",
            "scale": [1, 5],
        }
    )
    split_ratios: dict[str, float] = field(default_factory=_split_ratios)
    val_from_train: float = 0.1
    holdout: dict[str, Any] | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_from_train < 1.0:
            raise QualituneError(f"ingest.val_from_train must be in [0, 1), got {self.val_from_train}")


@dataclass(frozen=True)
class ValidateSettings(Section):
    """The Great Expectations gate (`qualitune.validate.run_validation`)."""

    SECTION: ClassVar[str] = "validate"
    out: str = "data/validated.parquet"
    quarantine: str = "data/quarantine.csv"
    report: str = "reports/validation.json"
    html: str | None = "reports/validation.html"
    metrics: str | None = "reports/data_metrics.json"
    max_fail_share: float = 0.0
    check_media: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_fail_share <= 1.0:
            raise QualituneError(f"validate.max_fail_share must be in [0, 1], got {self.max_fail_share}")


@dataclass(frozen=True)
class LabelsSettings(Section):
    """IOVQA's integer labels (or the decimal baseline) on the validated manifest."""

    SECTION: ClassVar[str] = "labels"
    out: str = "data/labeled.parquet"
    format: Literal["integer", "decimal"] = "integer"
    range: tuple[int, int] = (10, 50)

    def __post_init__(self) -> None:
        if self.range[0] >= self.range[1]:
            raise QualituneError(f"labels.range must be [lo, hi] with lo < hi, got {list(self.range)}")


@dataclass(frozen=True)
class AnnotateSettings(Section):
    """The machine annotators and their content-addressed cache."""

    SECTION: ClassVar[str] = "annotate"
    out: str = "data/annotations.csv"
    annotators: tuple[str, ...] = (
        "niqe",
        "brisque",
        "piqe",
        "sharpness",
        "blur",
        "noise",
        "blockiness",
        "exposure",
        "contrast",
        "colourfulness",
    )
    n_frames: int = 2
    workers: int = 0  # 0 = all cores
    cache_dir: str | None = ".cache/annotations"

    def __post_init__(self) -> None:
        if not self.annotators:
            raise QualituneError("annotate.annotators is empty: name at least one annotator")
        if self.n_frames < 1 or self.workers < 0:
            raise QualituneError(
                f"annotate.n_frames must be >= 1 and annotate.workers >= 0, got {self.n_frames}, {self.workers}"
            )


@dataclass(frozen=True)
class PmodSettings(Section):
    """VITAL's machine opinion distributions and their reports (`qualitune.pmod.run_pmod`)."""

    SECTION: ClassVar[str] = "pmod"
    out: str = "data/pmod.parquet"
    calibration: Literal["isotonic", "rank"] = "isotonic"
    min_std: float = 0.25
    exclude: tuple[str, ...] = ()
    metrics: str | None = "reports/pmod_metrics.json"
    calibrations: str | None = "reports/pmod_calibrations.json"
    plot_correlations: str | None = "reports/pmod_correlations.csv"
    plot_scatter: str | None = "reports/pmod_scatter.csv"
    plot_calibration: str | None = "reports/pmod_calibration.csv"
    calibration_png: str | None = "reports/pmod_calibration.png"

    def __post_init__(self) -> None:
        if self.min_std <= 0:
            raise QualituneError(f"pmod.min_std must be > 0, got {self.min_std}")

    def outputs(self) -> dict[str, str | None]:
        """The keyword arguments of `run_pmod` that name its report files."""
        names = (
            "metrics",
            "calibrations",
            "plot_correlations",
            "plot_scatter",
            "plot_calibration",
            "calibration_png",
        )
        return {k: getattr(self, k) for k in names}


@dataclass(frozen=True)
class ModelSettings(Section):
    """The VLM to fine-tune and how it sees media (the train stage; evaluate and register read
    `feature_cache`). `name_or_path` is a built-in name (`qualitune.vlm.backends`), a hub id in the
    local HF cache or a checkpoint folder."""

    SECTION: ClassVar[str] = "model"
    name_or_path: str = "compact-smollm2-135m-effnet-lite0"
    seed: int = 0
    dtype: str = "auto"
    min_pixels: int = 3136
    max_pixels: int = 50176
    video_mode: Literal["frames", "video"] = "frames"
    n_frames: int = 2
    init_vision_from: str | None = None
    transfer_projector: bool = False
    feature_cache: str | None = ".cache/features"
    anchor: Literal["probe", "none"] = "probe"

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise QualituneError(
                "model.min_pixels and model.max_pixels must satisfy 0 < min_pixels <= max_pixels, got "
                f"{self.min_pixels}, {self.max_pixels}"
            )
        if self.n_frames < 1:
            raise QualituneError(f"model.n_frames must be >= 1, got {self.n_frames}")


DEFAULT_PARAPHRASES = (
    "Rate the visual quality of this {media} on an integer scale from {lo} to {hi}, where {lo} is the worst "
    "and {hi} the best quality. Answer with the integer only.",
    "How good is the quality of this {media}? Reply with one integer between {lo} and {hi} ({hi} is best).",
    "Give this {media} a quality score from {lo} (worst) to {hi} (best). Only the integer.",
)

Mode = Literal["expected", "greedy"]


@dataclass(frozen=True)
class InstabilitySettings:
    """Repeated queries per val item at `temperature`, rotating the paraphrased prompts."""

    sample: int = 48
    repeats: int = 4
    temperature: float = 0.7
    paraphrases: tuple[str, ...] = DEFAULT_PARAPHRASES

    def __post_init__(self) -> None:
        if self.sample < 1 or self.repeats < 2 or self.temperature <= 0 or not self.paraphrases:
            raise QualituneError(
                "evaluate.instability needs sample >= 1, repeats >= 2 (one query cannot change), "
                f"temperature > 0 and at least one paraphrase, got sample {self.sample}, repeats "
                f"{self.repeats}, temperature {self.temperature}, {len(self.paraphrases)} paraphrases"
            )


@dataclass(frozen=True)
class LensSettings:
    """The logit lens on a sample of val items: its table and heatmap."""

    sample: int = 8
    top_k: int = 5
    table: str = "reports/logit_lens.csv"
    heatmap: str = "reports/logit_lens.png"


@dataclass(frozen=True)
class AttentionSettings:
    """Attention shares (image / prompt / answer tokens) on a sample of val items."""

    sample: int = 8
    table: str = "reports/attention.csv"
    plot: str = "reports/attention.png"


@dataclass(frozen=True)
class EvaluateSettings(Section):
    """The evaluate stage (`qualitune.pipeline.evaluate.evaluate_scorer`). `data` (null = `pmod.out`)
    scores another manifest with the same splits."""

    SECTION: ClassVar[str] = "evaluate"
    metrics: str = "reports/eval_metrics.json"
    predictions: str = "reports/eval_predictions.csv"
    scatter: str = "reports/eval_scatter.csv"
    scatter_plot: str = "reports/eval_scatter.png"
    splits: tuple[str, ...] = ("val", "test")
    modes: tuple[Mode, ...] = ("expected", "greedy")
    batch_size: int = 16
    seed: int = 0
    data: str | None = None
    instability: InstabilitySettings = field(default_factory=InstabilitySettings)
    lens: LensSettings = field(default_factory=LensSettings)
    attention: AttentionSettings = field(default_factory=AttentionSettings)

    def __post_init__(self) -> None:
        if not self.splits or not self.modes or self.batch_size < 1:
            raise QualituneError(
                "evaluate.splits and evaluate.modes must be non-empty and evaluate.batch_size >= 1, got "
                f"{list(self.splits)}, {list(self.modes)}, {self.batch_size}"
            )
        if min(self.lens.sample, self.attention.sample, self.lens.top_k) < 1:
            raise QualituneError("evaluate.lens.sample, lens.top_k and attention.sample must be >= 1")


# params.yaml's train.pretrain: VITAL's PMOD pre-training, on by default (docs/compact-backend.md)
PRETRAIN: dict[str, Any] = {
    "enabled": True,
    "method": "vital",
    "epochs": 1,
    "vital": {"target": "pmod", "score_weight": 1.0, "compare_weight": 0.0, "describe_weight": 0.0},
}


@dataclass(frozen=True)
class TrainStageSettings(Section):
    """The train section's keys about the stage rather than the loop: outputs, resume points, the
    Optuna overlay, the data (null = `pmod.out`) and the stage's own validation. `max_invalid_mass`
    is saved in the scorer: an expected-mode answer with more probability than this off the valid
    answers is counted as unparsed, wherever the scorer runs. `pretrain` is read by
    `TrainSettings.pretrain_from_params`. `from_params` reads only these keys of the section: the
    loop's keys, and a key that is neither, are `qualitune.training.settings.TrainSection`'s."""

    SECTION: ClassVar[str] = "train"

    out: str = "models/scorer"
    checkpoint_dir: str | None = "models/checkpoints"
    resume: bool = True
    metrics: str = "reports/train_metrics.json"
    loss_table: str | None = "reports/train_loss.csv"
    loss_plot: str | None = "reports/train_loss.png"
    tuned_params: str | None = "tuned_params.yaml"
    data: str | None = None
    val_batch_size: int = 16
    # the evaluate stage scores every mode on val and test; greedy here would double this validation
    val_modes: tuple[Literal["expected", "greedy"], ...] = ("expected",)
    max_invalid_mass: float = 0.5
    pretrain: dict[str, Any] | None = field(default_factory=lambda: dict(PRETRAIN))

    def __post_init__(self) -> None:
        if not self.val_modes or self.val_batch_size < 1:
            raise QualituneError(
                "train.val_modes must be a non-empty list of expected/greedy and train.val_batch_size "
                f">= 1, got {list(self.val_modes)}, {self.val_batch_size}"
            )
        if not 0.0 < self.max_invalid_mass <= 1.0:
            raise QualituneError(f"train.max_invalid_mass must be in (0, 1], got {self.max_invalid_mass}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainStageSettings:
        raw = params.get(cls.SECTION) or {}
        if not isinstance(raw, Mapping):
            raise QualituneError(f"params train must be a mapping, got {type(raw).__name__}")
        names = [f.name for f in fields(cls)]  # only these keys are read: the loop's are TrainSection's
        return build(cls, {k: raw[k] for k in names if k in raw}, cls.SECTION)


STAGE_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainStageSettings))


DATA_SECTIONS: tuple[type[Section], ...] = (
    IngestSettings,
    ValidateSettings,
    LabelsSettings,
    AnnotateSettings,
    PmodSettings,
)
