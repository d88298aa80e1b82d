"""The whole training schedule, computed up front from the seed: phases, epochs, the order of
examples and the batches (grouped by length), so optimizer step k always sees the same examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qualitune.errors import QualituneError
from qualitune.training.batches import _media_geometry
from qualitune.training.settings import TrainSettings
from qualitune.vlm.tasks import (
    Example,
    compare_examples,
    describe_examples,
    score_examples,
    score_text_examples,
)


@dataclass(frozen=True)
class Phase:
    name: str
    examples: list[Example]
    epochs: float


def training_rows(df: pd.DataFrame, s: TrainSettings) -> pd.DataFrame:
    """The train rows a run learns from: all of `df`, or the seeded `max_train_samples` sample."""
    if len(df) == 0:
        raise QualituneError("no training rows (is there a train split?)")
    if s.max_train_samples is not None:
        n = int(s.max_train_samples)
        df = df.sample(n=min(n, len(df)), random_state=s.seed).sort_index()
    return df


def build_phases(df: pd.DataFrame, s: TrainSettings) -> list[Phase]:
    """The recipe as phases of examples (train split rows in `df`)."""
    df = training_rows(df, s)
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
