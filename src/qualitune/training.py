"""The trainer: IOVQA, VITAL and two-stage recipes on one accelerate loop, with exact resume.

Why a small loop of our own rather than `transformers.Trainer`: the losses need the hidden state
at a handful of answer positions (value-only CE, KL over five level tokens, focal loss on
descriptions), batches mix tasks with one and two images, and resuming must reproduce an
uninterrupted run bit for bit. accelerate still does device placement, DDP/FSDP across processes
and bf16 autocast, so `accelerate launch -m qualitune.stages.train` scales it out unchanged.

Determinism and resume: the whole schedule -- phases, epochs, the order of examples, the batches --
is computed up front from the seed (`build_schedule`), so optimizer step k always sees the same
examples. A checkpoint holds the trainable weights, optimizer, LR scheduler, every RNG state and
the step; it is written to a temporary folder and renamed, so a kill -9 at any moment leaves
either the previous checkpoint or the new one, never half of one. Resuming loads the newest
checkpoint and continues with batch k+1; a fingerprint of the settings and example ids refuses a
checkpoint made for different data or settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from qualitune.errors import QualituneError
from qualitune.media import load_media
from qualitune.progress import Progress
from qualitune.vlm.backends.compact import is_compact, standardise_projector
from qualitune.vlm.forward import (
    VisionCache,
    attention_implementation,
    decoder_hidden,
    resolve_packing,
    vision_is_frozen,
)
from qualitune.vlm.inputs import encode_batch
from qualitune.vlm.losses import LossConfig, answer_losses, combine, supervised_labels
from qualitune.vlm.scoring import first_token_ids
from qualitune.vlm.tasks import (
    AnswerFormat,
    Example,
    compare_examples,
    describe_examples,
    score_examples,
    score_text_examples,
)
from qualitune.vlm.trainable import LoraSettings, apply_tuning, count_parameters, named_trainable, part_of

log = logging.getLogger(__name__)

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
    tuning: str = "lora"
    answer_format: str = "integer"
    label_range: tuple[int, int] = (10, 50)
    loss_on: str = "value"
    epochs: float = 2.0
    stage1_epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    projector_lr: float | None = None  # the projector's own learning rate (LLaVA's mm_projector_lr); None: lr
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 42
    max_train_samples: int | None = None
    # > 0: soft labels on the MOS examples, a KL towards a Gaussian of this width (1-5 scale) over the
    # answer's first token (`AnswerFormat.soft_targets`), weighted by vital.kl_weight, beside the CE
    label_sigma: float = 0.0
    checkpoint_every: int = 0
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
    def from_params(cls, cfg: dict[str, Any]) -> TrainSettings:
        known = {f for f in cls.__dataclass_fields__}
        stage_keys = {
            "out",
            "checkpoint_dir",
            "resume",
            "val_batch_size",
            "val_modes",
            "metrics",
            "loss_table",
            "loss_plot",
            "data",
            "tuned_params",
            "pretrain",
            "max_invalid_mass",
        }
        unknown = sorted(set(cfg) - known - stage_keys)
        if unknown:
            raise QualituneError(f"unknown keys in params train section: {unknown}")
        kw = {k: v for k, v in cfg.items() if k in known}
        if "lora" in kw:
            lora = dict(kw["lora"])
            if "target_modules" in lora:
                lora["target_modules"] = tuple(lora["target_modules"])
            kw["lora"] = LoraSettings(**lora)
        if "vital" in kw:
            kw["vital"] = VitalSettings(**kw["vital"])
        if "label_range" in kw:
            kw["label_range"] = tuple(int(x) for x in kw["label_range"])
        return cls(**kw)

    @classmethod
    def pretrain_from_params(cls, cfg: dict[str, Any]) -> TrainSettings | None:
        """The settings of VITAL's PMOD pre-training phase (`train.pretrain`), or None when it is off.

        Its keys override the train section's for that phase only, so batch size, LoRA shape and
        seed are shared unless the pretrain block says otherwise; `vital.target` must be `pmod`
        (the phase exists to learn the machine annotators' distributions, not the MOS)."""
        pre = dict(cfg.get("pretrain") or {})
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


def parameter_groups(model: torch.nn.Module, settings: TrainSettings) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one at `lr`, plus the projector's at `projector_lr` when
    that is set and the projector trains. A projector trained from scratch sits in front of a
    pretrained decoder whose LoRA needs small steps; LLaVA gives it its own rate for that reason."""
    trainable = list(named_trainable(model))
    if settings.projector_lr is None:
        return [{"params": [p for _, p in trainable]}]
    proj = [p for n, p in trainable if part_of(n) == "projector"]
    rest = [p for n, p in trainable if part_of(n) != "projector"]
    groups = [{"params": rest}] if rest else []
    if proj:
        groups.append({"params": proj, "lr": float(settings.projector_lr)})
    return groups


@dataclass(frozen=True)
class Phase:
    name: str
    examples: list[Example]
    epochs: float


def build_phases(df: pd.DataFrame, s: TrainSettings) -> list[Phase]:
    """The recipe as phases of examples (train split rows in `df`)."""
    if len(df) == 0:
        raise QualituneError("no training rows (is there a train split?)")
    if s.max_train_samples is not None:
        n = int(s.max_train_samples)
        df = df.sample(n=min(n, len(df)), random_state=s.seed).sort_index()
    fmt = s.fmt
    if s.method == "iovqa":
        return [Phase("score", score_examples(df, fmt, target="mos", label_sigma=s.label_sigma), s.epochs)]
    if s.method == "vital":
        v = s.vital
        ex = score_examples(df, fmt, target=v.target, weight=v.score_weight, label_sigma=s.label_sigma)
        if v.compare_weight > 0:
            ex += compare_examples(
                df,
                margin=v.compare_margin,
                pairs_per_item=v.pairs_per_item,
                seed=s.seed,
                weight=v.compare_weight,
            )
        if v.describe_weight > 0:
            ex += describe_examples(df, weight=v.describe_weight)
        return [Phase("vital", ex, s.epochs)]
    return [
        Phase("stage1_describe", describe_examples(df), s.stage1_epochs),
        Phase("stage2_score", score_text_examples(df, fmt), s.epochs),
    ]


@dataclass(frozen=True)
class Step:
    phase: int
    epoch: int
    rows: tuple[int, ...]  # indices into the phase's examples


GROUP_MEGABATCH = 50
"""`group_by_length` sorts windows of this many global batches by length (transformers'
LengthGroupedSampler uses the same factor): batches of similar lengths, still shuffled."""


def build_schedule(
    phases: Sequence[Phase],
    global_batch: int,
    seed: int,
    lengths: Sequence[Sequence[int]] | None = None,
) -> list[Step]:
    """Every micro-batch of the run, in order: a seeded permutation per (phase, epoch); a fractional
    last epoch keeps its first share of batches.

    With `lengths` (token counts per phase and example, `example_lengths`) the batches are length
    grouped: each window of `GROUP_MEGABATCH` batches of the permutation is sorted by length,
    longest first, and cut into batches, whose order is then shuffled, so a batch holds examples of
    similar length (little padding) while every epoch still sees every example once.
    """
    steps: list[Step] = []
    for p, phase in enumerate(phases):
        n = len(phase.examples)
        if n == 0 or phase.epochs <= 0:
            continue
        n_batches = math.ceil(n / global_batch)
        for e in range(math.ceil(phase.epochs)):
            order = np.random.default_rng([seed, p, e]).permutation(n)
            if lengths is not None:
                order = _group_by_length(order, lengths[p], global_batch, [seed, p, e])
            keep = n_batches if e + 1 <= phase.epochs else max(1, round((phase.epochs - e) * n_batches))
            for b in range(keep):
                steps.append(
                    Step(p, e, tuple(int(i) for i in order[b * global_batch : (b + 1) * global_batch]))
                )
    return steps


def _group_by_length(
    order: np.ndarray, lengths: Sequence[int], global_batch: int, seed: list[int]
) -> np.ndarray:
    lens = np.asarray(lengths)
    window = global_batch * GROUP_MEGABATCH
    out = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(-lens[chunk], kind="stable")]
        batches = [chunk[i : i + global_batch] for i in range(0, len(chunk), global_batch)]
        # a short batch stays last, so only the epoch's final batch can be smaller than the rest
        full = [b for b in batches if len(b) == global_batch]
        rest = [b for b in batches if len(b) < global_batch]
        perm = np.random.default_rng([*seed, start]).permutation(len(full))
        out.extend(full[i] for i in perm)
        out.extend(rest)
    return np.concatenate(out) if out else order


def example_lengths(
    examples: Sequence[Example], *, tokenizer, image_processor, n_frames: int, video_mode: str
) -> list[int]:
    """Token counts of examples as `encode_examples` makes them, for length grouping.

    The chat template, prompt and answer are tokenised as there; vision tokens come from each
    file's header (image size; a video's frame size times the frames it shows), not from decoding
    it, so this is cheap on a large dataset. The counts only decide which examples share a batch:
    a wrong one (e.g. a clip shorter than `n_frames`) costs a little padding, never a wrong result.
    """
    from qualitune.vlm.inputs import build_prompt

    merge = int(image_processor.merge_size) ** 2
    tp = int(image_processor.temporal_patch_size)
    text_len: dict[tuple, int] = {}
    geometry: dict[str, tuple[int, int, int]] = {}

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    out = []
    for ex in examples:
        blocks = []  # (frames, tokens per frame) per media file
        for path in ex.media:
            if path not in geometry:
                geometry[path] = _media_geometry(path, n_frames)
            width, height, frames = geometry[path]
            per_frame = image_processor.get_number_of_image_patches(height, width, {}) // merge
            blocks.append((1 if len(ex.media) > 1 else frames, per_frame))
        as_video = video_mode == "video" and len(blocks) == 1 and blocks[0][0] > 1
        n_images = 0 if as_video else sum(f for f, _ in blocks)
        key = (ex.prompt, ex.answer, n_images, int(as_video))
        if key not in text_len:
            prompt = build_prompt(tokenizer, ex.prompt, n_images=n_images, n_videos=int(as_video))
            pre, value, post = ex.answer
            # each unexpanded pad placeholder is one token; the vision tokens are added below
            text_len[key] = (
                n_tokens(prompt)
                - n_images
                - int(as_video)
                + n_tokens(pre)
                + n_tokens(value)
                + n_tokens(post + "<|im_end|>")
            )
        if as_video:
            vision = math.ceil(blocks[0][0] / tp) * blocks[0][1]
        else:
            vision = sum(f * t for f, t in blocks)
        out.append(text_len[key] + vision)
    return out


def _media_geometry(path: str, n_frames: int) -> tuple[int, int, int]:
    """(width, height, frames shown) of a file from its header; decodes it only as a fallback."""
    try:
        if path.lower().endswith(_VIDEO_SUFFIXES):
            import av

            with av.open(path) as container:
                ctx = container.streams.video[0].codec_context
                return int(ctx.width), int(ctx.height), n_frames
        from PIL import Image

        with Image.open(path) as img:
            return img.size[0], img.size[1], 1
    except Exception:  # an odd header: decode it (the trainer will anyway)
        item = _load(path, n_frames)
        frames = list(item) if isinstance(item, tuple) else [item]
        return frames[0].size[0], frames[0].size[1], len(frames)


class _MediaCache:
    """Decoded training media, least recently used first out, bounded in bytes
    (`QUALITUNE_MEDIA_CACHE_MB`, default 512): re-decoding a photo costs a few ms per epoch, while an
    unbounded cache held every decoded photo of the run (4,000 BIQ2021 photos: ~3 GB)."""

    def __init__(self, max_mb: float) -> None:
        import threading
        from collections import OrderedDict

        self.max_bytes = int(max_mb * 2**20)
        self.nbytes = 0
        self._items: OrderedDict[tuple[str, int], tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()  # the prefetch thread and the loop may both encode

    @staticmethod
    def _size(item) -> int:
        frames = item if isinstance(item, tuple) else (item,)
        return sum(f.size[0] * f.size[1] * len(f.getbands()) for f in frames)

    def get(self, path: str, n_frames: int):
        key = (path, n_frames)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        frames = load_media(path, n_frames=n_frames)
        single = len(frames) == 1 and not path.lower().endswith(_VIDEO_SUFFIXES)
        item = frames[0] if single else tuple(frames)
        size = self._size(item)
        with self._lock:
            if size <= self.max_bytes and key not in self._items:
                self._items[key] = (item, size)
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, (_, old) = self._items.popitem(last=False)
                    self.nbytes -= old
        return item


_MEDIA = _MediaCache(float(os.environ.get("QUALITUNE_MEDIA_CACHE_MB", "512")))


def _load(path: str, n_frames: int):
    return _MEDIA.get(path, n_frames)


_VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".yuv")


def media_item(ex: Example, n_frames: int):
    """PIL image(s) for an example: one image, a video's frames, two images for a pair (a video in
    a pair shows its first sampled frame), or None for text-only."""
    if not ex.media:
        return None
    if len(ex.media) == 1:
        item = _load(ex.media[0], n_frames)
        return list(item) if isinstance(item, tuple) else item
    out = []
    for path in ex.media:
        item = _load(path, n_frames)
        out.append(item[0] if isinstance(item, tuple) else item)
    return out


def encode_examples(
    examples: Sequence[Example],
    *,
    tokenizer,
    image_processor,
    n_frames: int,
    video_mode: str,
    focal_tasks: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Right-padded training batch plus the trainer's own tensors (weights, level targets...)."""
    batch = encode_batch(
        [media_item(e, n_frames) for e in examples],
        [e.prompt for e in examples],
        [e.answer for e in examples],
        tokenizer=tokenizer,
        image_processor=image_processor,
        padding_side="right",
        video_mode=video_mode,
    )
    vm = batch["value_mask"]
    batch["value_start"] = vm.int().argmax(dim=1)
    batch["weights"] = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    batch["focal_rows"] = torch.tensor([e.task in focal_tasks for e in examples])
    batch["level_rows"] = torch.tensor([e.levels is not None for e in examples])
    width = max((len(e.levels) for e in examples if e.levels is not None), default=5)
    batch["level_targets"] = torch.tensor(
        [list(e.levels) if e.levels is not None else [0.0] * width for e in examples], dtype=torch.float32
    )
    batch["media_keys"] = ["\n".join(e.media) for e in examples]  # VisionCache keys (not a tensor)
    return batch


class Objective(torch.nn.Module):
    """The model plus its loss, as one module so DDP sees a single forward per step.

    The decoder's hidden states come from `qualitune.vlm.forward.decoder_hidden`: the model's own
    forward, with a frozen vision tower run without autograd, optionally per-item cached
    (`vision_cache`) and the batch packed without padding (`pack`); the same numbers either way.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_cfg: LossConfig,
        level_ids: list[int] | None,
        *,
        pack: bool = False,
        vision_cache: VisionCache | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg
        self.level_ids = level_ids
        self.pack = pack
        self.vision_cache = vision_cache

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from qualitune.vlm.unwrap import unwrap_model

        base = unwrap_model(self.model)
        hidden = decoder_hidden(self.model, batch, pack=self.pack, cache=self.vision_cache)
        dev = hidden.device
        labels = supervised_labels(
            batch["labels"].to(dev), batch["value_mask"].to(dev), self.loss_cfg.loss_on
        )
        level_rows = batch["level_rows"].to(dev)
        losses = answer_losses(
            hidden,
            base.lm_head,
            labels,
            focal_rows=batch["focal_rows"].to(dev),
            cfg=self.loss_cfg,
            level_ids=self.level_ids,
            level_targets=batch["level_targets"].to(dev),
            level_rows=level_rows,
            value_start=batch["value_start"].to(dev),
        )
        loss = combine(losses, batch["weights"].to(dev), level_rows, self.loss_cfg)
        return loss, losses


@dataclass
class TrainResult:
    model: torch.nn.Module
    checkpoint_dir: Path | None
    steps: int
    optimizer_steps: int
    resumed_from: int | None
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    parameter_counts: dict[str, int] = field(default_factory=dict)
    n_examples: dict[str, int] = field(default_factory=dict)


SPEED_ONLY = ("packing", "cache_vision", "fused_optimizer", "prefetch")
"""Settings that change how fast a step runs, not which examples it sees: a run may resume with
other values (the weights then agree to float rounding), and they stay out of the fingerprint."""


def fingerprint(settings: TrainSettings, phases: Sequence[Phase], extra: dict | None = None) -> str:
    d = {k: v for k, v in settings.to_dict().items() if k not in SPEED_ONLY}
    if not d.get("group_by_length"):
        d.pop("group_by_length", None)  # default off: fingerprints of earlier runs stay valid
    h = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode())
    h.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    for ph in phases:
        for ex in ph.examples:
            h.update(f"{ph.name}|{ex.task}|{ex.item_id}|{ex.answer}|{ex.levels}|{ex.weight}\n".encode())
    return h.hexdigest()[:16]


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (`ckpt-NNNNNNN/state.json` exists) or None."""
    d = Path(directory)
    if not d.is_dir():
        return None
    done = sorted(
        p for p in d.glob("ckpt-*") if p.is_dir() and (p / "state.json").is_file() and "tmp" not in p.name
    )
    return done[-1] if done else None


def train(
    model: torch.nn.Module,
    tokenizer,
    image_processor,
    df_train: pd.DataFrame,
    settings: TrainSettings,
    *,
    n_frames: int = 2,
    video_mode: str = "frames",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch_end: Callable[[int, int, torch.nn.Module], bool | None] | None = None,
    fingerprint_extra: dict | None = None,
) -> TrainResult:
    """Train `model` (a freshly loaded base) with `settings` on the train rows `df_train`.

    Returns the trained (possibly peft-wrapped) model. `on_epoch_end(phase, epoch, model)` may
    return True to stop (Optuna pruning). With `checkpoint_dir` and `settings.checkpoint_every`,
    checkpoints are written every that many optimizer steps and, with `resume`, picked up.
    """
    from accelerate import Accelerator
    from transformers import get_scheduler

    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed % 2**32)
    use_cuda = (
        torch.cuda.is_available()
        and next(model.parameters()).device.type != "cpu"
        or (
            torch.cuda.is_available()
            and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
        )
    )
    mp = settings.mixed_precision
    if mp == "auto":
        mp = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(cpu=not use_cuda, mixed_precision=mp)

    phases = build_phases(df_train, settings)
    n_examples = {ph.name: len(ph.examples) for ph in phases}
    for ph in phases:
        tasks = pd.Series([e.task for e in ph.examples]).value_counts().to_dict() if ph.examples else {}
        log.debug("phase %s: %d examples %s, %.2f epochs", ph.name, len(ph.examples), tasks, ph.epochs)
    global_batch = settings.batch_size * acc.num_processes
    lengths = None
    if settings.group_by_length:
        lengths = [
            example_lengths(
                ph.examples,
                tokenizer=tokenizer,
                image_processor=image_processor,
                n_frames=n_frames,
                video_mode=video_mode,
            )
            for ph in phases
        ]
    schedule = build_schedule(phases, global_batch, settings.seed, lengths)
    fp = fingerprint(
        settings, phases, {"n_frames": n_frames, "video_mode": video_mode, **(fingerprint_extra or {})}
    )

    model = apply_tuning(model, settings.tuning, settings.lora)
    if is_compact(model):  # a from-scratch projector needs its inputs' scales (see compact.py)
        paths = sorted({p for ph in phases for ex in ph.examples for p in ex.media})
        if standardise_projector(model, image_processor, paths):
            log.debug("compact projector standardised on %d training photos", min(len(paths), 512))
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    counts = count_parameters(model)
    log.debug("parameters: %s", counts)
    soft = settings.label_sigma > 0
    level_ids = first_token_ids(tokenizer, settings.fmt) if settings.fmt.kind == "level" or soft else None
    loss_cfg = LossConfig(
        loss_on=settings.loss_on,
        kl_weight=settings.vital.kl_weight,
        ce_weight=settings.vital.ce_weight if settings.method == "vital" else 1.0,
        focal_alpha=settings.vital.focal_alpha,
        focal_gamma=settings.vital.focal_gamma,
        focal_tasks=("describe",) if settings.method == "vital" else (),
    )
    pack = resolve_packing(settings.packing, model)
    cache = None
    if settings.cache_vision:
        if not vision_is_frozen(model):
            raise QualituneError(
                f"train.cache_vision needs a frozen vision tower and projector (tuning: lora), "
                f"but tuning {settings.tuning!r} trains them"
            )
        cache = VisionCache(pin=use_cuda)
    objective = Objective(model, loss_cfg, level_ids, pack=pack, vision_cache=cache)
    fused = use_cuda if settings.fused_optimizer == "auto" else bool(settings.fused_optimizer)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, settings),
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        fused=True if fused else None,
    )
    prefetch = use_cuda if settings.prefetch == "auto" else bool(settings.prefetch)
    log.debug(
        "throughput: packing %s (attention %s), vision cache %s, fused AdamW %s, prefetch %s, "
        "length-grouped batches %s",
        pack,
        attention_implementation(model),
        cache is not None,
        fused,
        prefetch,
        settings.group_by_length,
    )
    n_opt_steps = math.ceil(len(schedule) / settings.grad_accum)
    scheduler = get_scheduler(
        settings.lr_scheduler,
        optimizer,
        num_warmup_steps=int(settings.warmup_ratio * n_opt_steps),
        num_training_steps=max(1, n_opt_steps),
    )
    objective, optimizer = acc.prepare(objective, optimizer)
    clip_params = [p for group in optimizer.param_groups for p in group["params"]]
    objective.train()

    start = 0
    resumed_from = None
    # one sub-folder per fingerprint: a run with other settings or data never picks these up
    ckpt_dir = Path(checkpoint_dir) / fp if checkpoint_dir else None
    if ckpt_dir is not None and resume:
        last = latest_checkpoint(ckpt_dir)
        if last is not None:
            start = _load_checkpoint(last, acc, model, optimizer, scheduler, fp)
            resumed_from = start
            log.info("resumed from %s (micro-step %d of %d)", last, start, len(schedule))
    elif ckpt_dir is not None and ckpt_dir.exists() and not resume:
        shutil.rmtree(ckpt_dir)

    history: list[dict] = []
    rank, world = acc.process_index, acc.num_processes
    running: list[float] = []
    opt_step = start // settings.grad_accum
    stopped = False

    def encode_step(k: int) -> dict:
        step = schedule[k]
        rows = step.rows[rank::world]
        if not rows:  # a last batch smaller than the number of processes
            rows = step.rows[:1]
        batch = encode_examples(
            [phases[step.phase].examples[i] for i in rows],
            tokenizer=tokenizer,
            image_processor=image_processor,
            n_frames=n_frames,
            video_mode=video_mode,
            focal_tasks=loss_cfg.focal_tasks,
        )
        if prefetch and use_cuda:  # pinned: the copy to the GPU runs asynchronously
            batch = {n: v.pin_memory() if isinstance(v, torch.Tensor) else v for n, v in batch.items()}
        return batch

    def next_step(k: int) -> int | None:
        """The step to encode ahead of `k`, or None where an `on_epoch_end` callback may use the
        tokenizer (validation) between the two: the fast tokenizer is not safe across threads."""
        if k + 1 >= len(schedule):
            return None
        boundary = (schedule[k + 1].phase, schedule[k + 1].epoch) != (schedule[k].phase, schedule[k].epoch)
        return None if boundary and on_epoch_end is not None else k + 1

    source = _BatchSource(encode_step, ahead=prefetch)
    per_step = global_batch * settings.grad_accum
    progress = Progress(n_opt_steps * per_step, "train", "samples", start=opt_step * per_step, logger=log)
    recent_losses: list[float] = []
    for k in range(start, len(schedule)):
        step = schedule[k]
        phase = phases[step.phase]
        batch = source.get(k, next_step(k))
        last_micro = (k + 1) % settings.grad_accum == 0 or k + 1 == len(schedule)
        ctx = acc.no_sync(objective) if not last_micro and world > 1 else _null()
        # DDP averages the processes' gradients; a process holding other than 1/world of the global
        # batch (an uneven last batch; 0 for the stand-in row of an empty share) is weighted so the
        # result is the global batch's mean, as one process would compute it
        share = len(step.rows[rank::world]) * world / len(step.rows)
        with ctx, acc.autocast():
            loss, parts = objective(batch)
            acc.backward(loss * share / settings.grad_accum)
        # the logged loss is the global batch's, not this process's share of it
        running.append(
            float(acc.reduce(loss.detach() * share, "mean")) if world > 1 else float(loss.detach())
        )
        if not last_micro:
            continue
        if settings.max_grad_norm and settings.max_grad_norm > 0:
            acc.clip_grad_norm_(clip_params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        opt_step += 1
        entry = {
            "step": opt_step,
            "phase": phase.name,
            "epoch": step.epoch,
            "loss": float(np.mean(running)),
            "lr": float(scheduler.get_last_lr()[0]),
        }
        running = []
        history.append(entry)
        recent_losses.append(entry["loss"])
        if acc.is_main_process:
            extra = f"{phase.name} epoch {step.epoch + 1}, step {opt_step}/{n_opt_steps}, loss {np.mean(recent_losses[-20:]):.4f}"
            progress.update(opt_step * per_step, extra)
        if on_log is not None and acc.is_main_process:
            on_log(opt_step, {"train.loss": entry["loss"], "train.lr": entry["lr"]})
        if (
            ckpt_dir is not None
            and settings.checkpoint_every > 0
            and opt_step % settings.checkpoint_every == 0
        ):
            _save_checkpoint(ckpt_dir, k + 1, acc, model, optimizer, scheduler, fp, settings.keep_checkpoints)
        epoch_done = k + 1 == len(schedule) or (schedule[k + 1].phase, schedule[k + 1].epoch) != (
            step.phase,
            step.epoch,
        )
        if epoch_done and on_epoch_end is not None:
            if on_epoch_end(step.phase, step.epoch, model):
                stopped = True
                break
    source.close()
    if cache is not None:
        log.debug(
            "vision cache: %d items, %.1f MiB, %d hits, %d misses",
            len(cache),
            cache.nbytes / 2**20,
            cache.hits,
            cache.misses,
        )
    acc.wait_for_everyone()
    model = acc.unwrap_model(objective).model
    model.eval()
    if stopped:
        log.info("stopped early by on_epoch_end")
    return TrainResult(
        model=model,
        checkpoint_dir=ckpt_dir,
        steps=len(schedule),
        optimizer_steps=opt_step,
        resumed_from=resumed_from,
        history=history,
        seconds=time.perf_counter() - t0,
        parameter_counts=counts,
        n_examples=n_examples,
    )


class _BatchSource:
    """The schedule's batches; with `ahead`, step k+1 is encoded in a background thread while
    step k runs on the device (image decoding and patching are CPU work the GPU would wait for).
    Encoding is deterministic, so the batches are the same either way."""

    def __init__(self, encode: Callable[[int], dict], *, ahead: bool) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._encode = encode
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="qualitune-prefetch") if ahead else None
        self._pending: tuple[int, Any] | None = None

    def get(self, k: int, next_k: int | None) -> dict:
        if self._pending is not None and self._pending[0] == k:
            batch = self._pending[1].result()
        else:
            batch = self._encode(k)
        self._pending = None
        if self._pool is not None and next_k is not None:
            self._pending = (next_k, self._pool.submit(self._encode, next_k))
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = None


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _save_checkpoint(
    directory: Path, micro_step: int, acc, model, optimizer, scheduler, fp: str, keep: int
) -> None:
    from safetensors.torch import save_file

    from qualitune.vlm.trainable import trainable_state

    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt-{micro_step:07d}"
    tmp = directory / f"ckpt-{micro_step:07d}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_{acc.process_index}.pt")
    if acc.is_main_process:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        state = {"micro_step": micro_step, "fingerprint": fp, "world_size": acc.num_processes}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(p for p in directory.glob("ckpt-*") if p.is_dir() and p != final)[
            : -max(1, keep) + 1 or None
        ]:
            if old.name.endswith(".tmp"):
                continue
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load_checkpoint(path: Path, acc, model, optimizer, scheduler, fp: str) -> int:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != fp:
        raise QualituneError(
            f"checkpoint {path} was made for other settings or data (fingerprint {state['fingerprint']} != {fp}); "
            "delete the checkpoint folder or set train.resume: false to start over"
        )
    if state.get("world_size", 1) != acc.num_processes:
        raise QualituneError(
            f"checkpoint {path} was written by {state.get('world_size')} processes, this run has {acc.num_processes}"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            if name not in named:
                raise QualituneError(f"checkpoint {path} has weight {name} the model lacks")
            named[name].copy_(value.to(named[name].device, named[name].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng_{acc.process_index}.pt"
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return int(state["micro_step"])


__all__ = [
    "METHODS",
    "Objective",
    "Phase",
    "TrainResult",
    "TrainSettings",
    "VitalSettings",
    "build_phases",
    "build_schedule",
    "encode_examples",
    "latest_checkpoint",
    "train",
]
