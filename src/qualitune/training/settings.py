"""Training settings: the recipes (IOVQA, VITAL, two-stage), their hyper-parameters, and the
checks that turn a typo in params.yaml into a message instead of a silent default.

params.yaml's `train` section holds two kinds of keys: the loop's (`TrainSettings`, what is learned
and how) and the stage's (`qualitune.sections.TrainStageSettings`, where it reads and writes and how
it validates: evaluate and register read those without importing the training package);
`TrainSection.from_params` reads both and the PMOD pre-training phase, refusing a key that is
neither. Every default here is params.yaml's own value (tests/test_sections.py holds them equal), so
`TrainSettings()` is the pipeline's recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from qualitune.errors import QualituneError
from qualitune.sections import PRETRAIN, STAGE_KEYS, TrainStageSettings, build
from qualitune.vlm.tasks import (
    AnswerFormat,
)
from qualitune.vlm.trainable import LoraSettings

METHODS = ("iovqa", "vital", "two_stage")


@dataclass(frozen=True)
class VitalSettings:
    """VITAL's multi-task mix: task weights, pair margin (on the 1-5 PMOD mean) and loss weights."""

    target: str = "pmod"  # score value and KL target from the PMOD ("pmod") or from human MOS ("mos")
    score_weight: float = 1.0
    compare_weight: float = 0.5
    describe_weight: float = 0.5
    compare_margin: float = 0.5
    pairs_per_item: int = 1
    kl_weight: float = 1.0
    ce_weight: float = 0.5
    focal_alpha: float = 1.0
    focal_gamma: float = 2.0


@dataclass(frozen=True)
class TrainSettings:
    """Everything the loop needs; `from_params` reads params.yaml's `train` section.

    `answer_format`/`label_range`: IOVQA's integer labels (or the decimal baseline); `vital` always
    answers with level words. `loss_on`: "value" is the integer-only mask, "answer" the full-answer
    baseline. `max_train_samples` caps the examples (VITAL's decoder warm-up on N samples).
    `epochs` may be fractional; 0 trains nothing (zero-shot transfer).
    """

    method: str = "iovqa"
    tuning: str = "warmup"
    answer_format: str = "integer"
    label_range: tuple[int, int] = (10, 50)
    loss_on: str = "value"
    epochs: float = 2.0
    stage1_epochs: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    projector_lr: float | None = None  # the projector's own learning rate (LLaVA's mm_projector_lr); None: lr
    weight_decay: float = 0.01
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    max_train_samples: int | None = None
    # > 0: soft labels on the MOS examples, a KL towards a Gaussian of this width (1-5 scale) over the
    # answer's first token (`AnswerFormat.soft_targets`), weighted by vital.kl_weight, beside the CE
    label_sigma: float = 0.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    # Throughput (docs/benchmarks.md); none changes what is learned beyond float rounding, except
    # group_by_length, which changes which examples share a batch.
    group_by_length: bool = False  # batches of similar token counts (less padding)
    packing: str | bool = "auto"  # padding-free batches; auto: only with a varlen flash-attention kernel
    cache_vision: bool = False  # frozen vision tower: features computed once per item, kept on the CPU
    fused_optimizer: str | bool = "auto"  # fused AdamW kernel; auto: on CUDA
    prefetch: str | bool = "auto"  # encode the next batch in a background thread; auto: on CUDA
    lora: LoraSettings = field(default_factory=LoraSettings)
    vital: VitalSettings = field(default_factory=VitalSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise QualituneError(f"train.method must be one of {METHODS}, got {self.method!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise QualituneError("train.batch_size and train.grad_accum must be >= 1")
        if self.epochs < 0 or self.stage1_epochs < 0:
            raise QualituneError("train.epochs must be >= 0")
        if not (isinstance(self.label_sigma, (int, float)) and self.label_sigma >= 0):
            raise QualituneError(
                f"train.label_sigma must be a number >= 0 (0 = off), got {self.label_sigma!r}"
            )
        if self.label_sigma > 0:
            self.fmt.first_token_bins()  # the format supports soft labels, or a clear error now
        if self.projector_lr is not None and not (
            isinstance(self.projector_lr, (int, float))
            and not isinstance(self.projector_lr, bool)
            and self.projector_lr > 0
        ):
            raise QualituneError(
                f"train.projector_lr must be a positive number or null, got {self.projector_lr!r}"
            )
        for name in ("packing", "fused_optimizer", "prefetch"):
            if getattr(self, name) not in ("auto", True, False):
                raise QualituneError(f"train.{name} must be auto, true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_params(cls, cfg: Mapping[str, Any]) -> TrainSettings:
        """The loop's settings from a `train` section (its stage keys are skipped, any other key is
        an error), each value checked against its field's type."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(known) - set(STAGE_KEYS))
        if unknown:
            raise QualituneError(
                f"unknown key(s) in params train: {unknown}; known: {sorted(known + list(STAGE_KEYS))}"
            )
        return build(cls, {k: v for k, v in cfg.items() if k in known}, "train")

    @classmethod
    def pretrain_from_params(cls, cfg: dict[str, Any]) -> TrainSettings | None:
        """The settings of VITAL's PMOD pre-training phase (`train.pretrain`), or None when it is off.

        Its keys override the train section's for that phase only, so batch size, LoRA shape and
        seed are shared unless the pretrain block says otherwise; `vital.target` must be `pmod`
        (the phase exists to learn the machine annotators' distributions, not the MOS)."""
        pre = dict(cfg.get("pretrain", PRETRAIN) or {})
        unknown = sorted(set(pre) - {"enabled"} - set(cls.__dataclass_fields__))
        if unknown:
            raise QualituneError(f"unknown keys in params train.pretrain: {unknown}")
        if not pre.pop("enabled", False):
            return None
        base = {k: v for k, v in cfg.items() if k in cls.__dataclass_fields__}
        merged = {**base, **pre}
        if isinstance(base.get("vital"), dict) and isinstance(pre.get("vital"), dict):
            merged["vital"] = {**base["vital"], **pre["vital"]}
        settings = cls.from_params(merged)
        if settings.method != "vital" or settings.vital.target != "pmod":
            raise QualituneError(
                "train.pretrain is VITAL's PMOD pre-training: it needs method: vital with "
                f"vital.target: pmod, got method {settings.method!r}, target {settings.vital.target!r}"
            )
        main = cls.from_params(base).tuning
        # the second phase continues the first one's weights: the same mode, or the projector +
        # LoRA of `warmup` followed by the same LoRA alone (LLaVA's order: align, then fine-tune)
        if settings.tuning != main and (settings.tuning, main) != ("warmup", "lora"):
            raise QualituneError(
                "train.pretrain.tuning must equal train.tuning, or be warmup before lora: the second "
                f"phase continues the same trainable weights (got {settings.tuning!r} vs {main!r})"
            )
        return settings

    @property
    def fmt(self) -> AnswerFormat:
        kind = "level" if self.method == "vital" else self.answer_format
        return AnswerFormat(kind, *self.label_range)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainSection:
    """params.yaml's whole `train` section: the stage's keys, the recipe, and the PMOD pre-training
    phase (None when `pretrain.enabled` is false)."""

    stage: TrainStageSettings
    loop: TrainSettings
    pretrain: TrainSettings | None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainSection:
        raw = params.get("train") or {}
        if not isinstance(raw, Mapping):
            raise QualituneError(f"params train must be a mapping, got {type(raw).__name__}")
        loop = TrainSettings.from_params(raw)  # refuses keys that are neither the loop's nor the stage's
        stage = TrainStageSettings.from_params(params)
        pretrain = TrainSettings.pretrain_from_params({**raw, "pretrain": stage.pretrain})
        return cls(stage, loop, pretrain)
