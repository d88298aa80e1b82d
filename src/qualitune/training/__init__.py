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

The package, one module per concern: :mod:`~.settings` (recipes and their checks),
:mod:`~.schedule` (phases, example order, batches), :mod:`~.batches` (media and tokenised inputs),
:mod:`~.objective` (the losses), :mod:`~.checkpoints` (atomic save, exact resume, fingerprints) and
:mod:`~.loop` (:func:`train`, the accelerate loop).
"""

from qualitune.training.batches import _MEDIA, _load, _MediaCache, encode_examples, media_item
from qualitune.training.checkpoints import (
    SPEED_ONLY,
    _load_checkpoint,
    _save_checkpoint,
    fingerprint,
    latest_checkpoint,
)
from qualitune.training.loop import TrainResult, parameter_groups, train
from qualitune.training.objective import Objective
from qualitune.training.schedule import (
    GROUP_MEGABATCH,
    Phase,
    Step,
    build_phases,
    build_schedule,
    example_lengths,
)
from qualitune.training.settings import METHODS, TrainSettings, VitalSettings

__all__ = [
    "GROUP_MEGABATCH",
    "METHODS",
    "SPEED_ONLY",
    "Objective",
    "Phase",
    "Step",
    "TrainResult",
    "TrainSettings",
    "VitalSettings",
    "_MEDIA",
    "_MediaCache",
    "_load",
    "_load_checkpoint",
    "_save_checkpoint",
    "build_phases",
    "build_schedule",
    "encode_examples",
    "example_lengths",
    "fingerprint",
    "latest_checkpoint",
    "media_item",
    "parameter_groups",
    "train",
]
