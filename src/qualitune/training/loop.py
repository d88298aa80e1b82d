"""The accelerate training loop over the precomputed schedule (see :mod:`qualitune.training`)."""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from qualitune.errors import QualituneError
from qualitune.progress import Progress
from qualitune.training.batches import encode_examples
from qualitune.training.checkpoints import _load_checkpoint, _save_checkpoint, fingerprint, latest_checkpoint
from qualitune.training.objective import Objective
from qualitune.training.schedule import build_phases, build_schedule, example_lengths
from qualitune.training.settings import TrainSettings
from qualitune.vlm.backends.compact import is_compact, standardise_projector
from qualitune.vlm.forward import (
    VisionCache,
    attention_implementation,
    resolve_packing,
    vision_is_frozen,
)
from qualitune.vlm.losses import LossConfig
from qualitune.vlm.scoring import first_token_ids
from qualitune.vlm.trainable import apply_tuning, count_parameters, named_trainable, part_of

log = logging.getLogger(__name__)


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
