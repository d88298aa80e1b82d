"""Typed params sections: one frozen dataclass per `params.yaml` section of the data stages.

Why: a stage that reads `cfg.get("min_std", 0.25)` carries a second default that can drift from
params.yaml, and a typo (`min_sdt`) silently falls back to it. Here every key a section may hold is a
field, an unknown key is an error that lists the known ones, a value of the wrong type is an error
that names the key, and the field defaults are params.yaml's own values (tests/test_sections.py
holds them equal), so a partial params mapping (a test's, an older params file) means what
params.yaml means. The model, train, mlflow, register, tune and serve sections have their settings
classes beside the code that uses them (`TrainSettings`, `TrackingSettings`, `RegisterSettings`,
`TuneSettings`, `ServeSettings`, `DemoConfig`).
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
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


DATA_SECTIONS: tuple[type[Section], ...] = (
    IngestSettings,
    ValidateSettings,
    LabelsSettings,
    AnnotateSettings,
    PmodSettings,
)
