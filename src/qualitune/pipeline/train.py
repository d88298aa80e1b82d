"""Training a scorer from params: the `train` stage's work, also run by `qualitune train`, each Optuna
trial, the retraining flow and the benchmarks.

Reads params `model`, `train`, `mlflow` (and `pmod.out` for the data). Writes the scorer folder
(`train.out`, loadable by `qualitune score --model models/scorer`), validation metrics of the
configured scoring modes (`train.metrics`, a DVC metric) and logs params, per-step loss, metrics and
the scorer to MLflow. Under `accelerate launch` every process trains its share of each batch; only
the main process (rank 0) validates, saves and logs to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qualitune.errors import QualituneError
from qualitune.jsonable import json_default, numeric_only

if TYPE_CHECKING:
    from qualitune.training.settings import TrainSettings

log = logging.getLogger("qualitune.train")


EpochHook = Callable[[int, int, dict[str, Any]], bool | None]


def process_rank() -> int:
    """This process's rank under `accelerate launch`/torchrun/MPI (0 when run alone), read from the
    launcher's environment: accelerate's own state is set up later, by the trainer."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], 0)


def train_scorer(
    params: dict[str, Any],
    *,
    data: str | None = None,
    on_epoch_end: EpochHook | None = None,
    out_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    run_name: str | None = None,
    nested: bool = False,
) -> dict[str, Any]:
    """Train, save and validate a scorer from params; returns the metrics written.

    `on_epoch_end(phase, epoch, val_metrics)` gets the `expected`-mode validation metrics after
    every epoch (scored on the val split, which costs a pass over it) and may return True to stop
    (Optuna's pruner). `out_dir`/`metrics_path` override `train.out`/`train.metrics`; `nested`
    makes the MLflow run a child of the active one (one per Optuna trial)."""
    import torch

    from qualitune.config import apply_tuned
    from qualitune.evaluate import evaluate_split
    from qualitune.manifest import read_manifest
    from qualitune.scorer import Scorer, ScorerSpec, load_scored_model, save_scorer
    from qualitune.sections import ModelSettings, PmodSettings
    from qualitune.tracking import MetricBuffer, log_artifacts, log_metrics, start_run, tracking_settings
    from qualitune.training import train
    from qualitune.training.settings import TrainSection
    from qualitune.vlm.feature_store import attach_feature_store
    from qualitune.vlm.model import load_model, make_processor
    from qualitune.vlm.trainable import transfer_vision, vision_weights

    params = apply_tuned(params, TrainSection.from_params(params).stage.tuned_params)
    model_cfg = ModelSettings.from_params(params)
    mcfg = dataclasses.asdict(model_cfg)
    train_cfg = TrainSection.from_params(params)  # again: the overlay may change the recipe
    stage, settings, pretrain = train_cfg.stage, train_cfg.loop, train_cfg.pretrain
    data = data or stage.data or PmodSettings.value(params, "out")
    df = read_manifest(data)
    train_df = df[df["split"] == "train"]
    val_df = df[df["split"] == "val"]
    if len(val_df) == 0:
        raise QualituneError(
            f"{data} has no val split to validate on; set ingest.split_ratios or val_from_train"
        )

    model, tokenizer = load_model(model_cfg.name_or_path, dtype=model_cfg.dtype, seed=model_cfg.seed)
    attach_feature_store(model, model_cfg.feature_cache)
    if torch.cuda.is_available():
        model = model.to("cuda")
    if model_cfg.init_vision_from:
        source, _, _ = load_scored_model(model_cfg.init_vision_from)
        n = transfer_vision(source, model, include_projector=model_cfg.transfer_projector)
        log.info("vision encoder transferred from %s (%d tensors)", model_cfg.init_vision_from, n)
        del source
    anchor_tokens = _add_anchor(model, tokenizer, model_cfg, settings)  # before the processor: +1 token
    proc = make_processor(model, model_cfg.min_pixels, model_cfg.max_pixels)
    out_dir = Path(out_dir or stage.out)
    metrics_path = Path(metrics_path or stage.metrics)
    tracking = tracking_settings(params)
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise QualituneError(
            "FSDP is not supported by the trainer yet: it saves the scorer and checkpoints and validates "
            "from rank 0 without gathering the sharded weights. Launch with DDP instead: "
            "accelerate launch --config_file configs/accelerate/ddp.yaml -m qualitune.stages.train"
        )
    main_process = process_rank() == 0
    if not main_process:  # one MLflow run, one scorer folder: the other ranks only train
        tracking = dataclasses.replace(tracking, enabled=False)
    run_params = {
        "model": mcfg,
        "train": settings.to_dict(),
        "pretrain": pretrain.to_dict() if pretrain is not None else None,
        "data": {"path": str(data), "n_train": len(train_df)},
    }

    spec = ScorerSpec(
        base_model=model_cfg.name_or_path,
        base_seed=model_cfg.seed,
        dtype=model_cfg.dtype,
        answer_format=settings.fmt.to_dict(),
        min_pixels=model_cfg.min_pixels,
        max_pixels=model_cfg.max_pixels,
        video_mode=model_cfg.video_mode,
        n_frames=model_cfg.n_frames,
        two_stage=settings.method == "two_stage",
        max_invalid_mass=stage.max_invalid_mass,
        anchor_tokens=anchor_tokens,
        recipe={
            "method": settings.method,
            "tuning": settings.tuning,
            "loss_on": settings.loss_on,
            "init_vision_from": model_cfg.init_vision_from,
            "pretrain": pretrain is not None,
        },
    )
    val_batch, val_modes = stage.val_batch_size, stage.val_modes
    epoch_hook = None
    if on_epoch_end is not None:

        def epoch_hook(phase: int, epoch: int, model) -> bool | None:
            model.eval()
            m, _ = evaluate_split(
                Scorer(model, tokenizer, spec), val_df, modes=("expected",), batch_size=val_batch
            )
            model.train()
            try:  # a tracking server that fails mid-run must not stop the training
                log_metrics({"epoch_val": numeric_only(m["expected"])}, step=epoch)
            except Exception as exc:
                log.warning(
                    "logging epoch %d's val metrics to MLflow failed (%s); training goes on", epoch, exc
                )
            return on_epoch_end(phase, epoch, m["expected"])

    with start_run(
        tracking,
        run_name or f"train-{settings.method}-{settings.tuning}",
        params=run_params,
        tags={"stage": "train", "method": settings.method, "tuning": settings.tuning},
        nested=nested,
    ):
        t0 = time.perf_counter()
        anchor_fit = None
        if anchor_tokens:  # the probe the anchor token carries, fitted once before any phase
            anchor_fit = _fit_anchor(model, proc, tokenizer, train_df, val_df, settings, model_cfg.n_frames)
        step_log = MetricBuffer(every=50)
        # where features are stored changes no result: it stays out of the resume fingerprint
        fingerprint_extra = {
            "model": {k: v for k, v in mcfg.items() if k != "feature_cache"},
            "data": str(data),
        }

        def run_phase(start_model, phase_settings: TrainSettings, on_log, extra: dict, on_epoch=None):
            return train(
                start_model,
                tokenizer,
                proc,
                train_df,
                phase_settings,
                n_frames=model_cfg.n_frames,
                video_mode=model_cfg.video_mode,
                checkpoint_dir=stage.checkpoint_dir,
                resume=stage.resume,
                on_log=on_log,
                on_epoch_end=on_epoch,
                fingerprint_extra=extra,
            )

        pre_result = None
        if pretrain is not None:  # VITAL: first learn the annotators' level distributions (no MOS)
            log.info("phase 1 of 2: PMOD pre-training (%s epochs)", pretrain.epochs)
            pre_result = run_phase(
                model,
                pretrain,
                lambda step, m: step_log(step, {f"pretrain.{k}": v for k, v in m.items()}),
                {**fingerprint_extra, "phase": "pretrain"},
            )
            model = pre_result.model
            model.train()
            log.info("phase 2 of 2: the MOS recipe continues the pre-trained weights")
            # the main phase starts from the pre-trained weights: its checkpoints are another run's
            fingerprint_extra["pretrain"] = pretrain.to_dict()
        step_offset = pre_result.optimizer_steps if pre_result is not None else 0
        result = run_phase(
            model, settings, lambda step, m: step_log(step + step_offset, m), fingerprint_extra, epoch_hook
        )
        train_seconds = time.perf_counter() - t0
        if not main_process:
            return {}
        scorer = Scorer(result.model, tokenizer, spec)
        t1 = time.perf_counter()
        val_metrics, _ = evaluate_split(scorer, val_df, modes=val_modes, batch_size=val_batch)
        val_seconds = time.perf_counter() - t1
        losses = [h["loss"] for h in result.history]
        metrics = {
            "val": val_metrics,
            "train": {
                "n_examples": result.n_examples,
                "optimizer_steps": result.optimizer_steps,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "seconds": round(train_seconds, 2),
                "resumed_from_micro_step": result.resumed_from,
                "parameters": result.parameter_counts,
            },
            "pretrain": None
            if pre_result is None
            else {
                "optimizer_steps": pre_result.optimizer_steps,
                "loss_first": pre_result.history[0]["loss"] if pre_result.history else None,
                "loss_last": pre_result.history[-1]["loss"] if pre_result.history else None,
                "seconds": round(pre_result.seconds, 2),
            },
            "val_seconds": round(val_seconds, 2),
            "anchor": anchor_fit,
        }
        spec.metrics = {"val": val_metrics}
        transferred = vision_weights(result.model) if model_cfg.init_vision_from else None
        # the outputs go to disk first: a tracking server that fails from here on loses nothing
        save_scorer(result.model, spec, out_dir, extra_weights=transferred)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(metrics, indent=2, default=json_default) + "\n")
        # one step count over both phases, as in MLflow; `task` is the phase's own objective
        history = [
            {**h, "task": h["phase"], "phase": "pretrain"}
            for h in (pre_result.history if pre_result is not None else [])
        ] + [
            {**h, "task": h["phase"], "phase": "recipe", "step": h["step"] + step_offset}
            for h in result.history
        ]
        plots = _write_loss_plots(history, stage.loss_table, stage.loss_plot)
        try:
            step_log.flush()
            log_metrics({"val": numeric_only(val_metrics), "train_seconds": train_seconds})
            log_artifacts(out_dir, "scorer")
            log_artifacts(metrics_path)
            for path in plots:
                log_artifacts(path, "plots")
        except Exception as exc:
            if not tracking.enabled:
                raise
            kept = [str(d.checkpoint_dir) for d in (pre_result, result) if d is not None and d.checkpoint_dir]
            raise TrackingFailed(
                f"training finished and its outputs are on disk (scorer {out_dir}, metrics {metrics_path}, "
                f"loss history {stage.loss_table}), but logging them to MLflow at {tracking.tracking_uri} "
                f"failed ({type(exc).__name__}: {exc}); rerun `dvc repro` once the tracking server answers"
                + (f" (it resumes from the checkpoints kept in {', '.join(kept)})" if kept else "")
            ) from exc
        for done in (pre_result, result):  # the run is complete and logged: its resume points go
            if done is not None and done.checkpoint_dir is not None:
                shutil.rmtree(done.checkpoint_dir, ignore_errors=True)
    return metrics


def _add_anchor(model, tokenizer, model_cfg, settings: TrainSettings) -> int:
    """`model.anchor: probe` on the compact backend: add the quality anchor token (fitted later, by
    `_fit_anchor`); returns its number of anchor embeddings, 0 without one."""
    from qualitune.vlm.backends.compact import is_compact
    from qualitune.vlm.backends.compact.anchor import add_anchor, anchor_vocabulary

    if model_cfg.anchor == "none":
        return 0
    if not is_compact(model):
        log.info(
            "model.anchor: probe belongs to the compact backend; %s trains without it", model_cfg.name_or_path
        )
        return 0
    ids, _, _ = anchor_vocabulary(tokenizer, settings.fmt)
    add_anchor(model, len(ids))
    return len(ids)


def _fit_anchor(model, proc, tokenizer, train_df, val_df, settings: TrainSettings, n_frames: int) -> dict:
    """Fit the anchor's probe on the rows the run trains on, its penalty on val (logged)."""
    from qualitune.progress import Progress
    from qualitune.training.schedule import training_rows
    from qualitune.vlm.backends.compact.anchor import fit_anchor

    rows = training_rows(train_df, settings)
    progress = Progress(len(rows) + len(val_df), "anchor: encoder features", "files", logger=log)
    fit = fit_anchor(
        model, proc, tokenizer, rows, val_df, settings.fmt, n_frames=n_frames, on_progress=progress.report
    )
    progress.close()
    log.info(
        "anchor: ridge probe on %d train items (alpha %g; val SRCC %.3f), width %.2f, tokens %s",
        fit["n_train"],
        fit["alpha"],
        fit["probe_val_srcc"],
        fit["sigma"],
        " ".join(repr(t) for t in fit["tokens"]),
    )
    return fit


class TrackingFailed(QualituneError):
    """Training completed and wrote its outputs, but MLflow could not record them."""


def summary_line(metrics: dict[str, Any]) -> str:
    """`train: 1004 score examples, 126 steps in 440 s after 63 PMOD pre-training steps; val ...`."""
    t, val = metrics["train"], metrics["val"]
    pre = metrics.get("pretrain")
    return (
        f"train: {_count(t['n_examples'])} examples, {t['optimizer_steps']} steps"
        + (
            f" after {pre['optimizer_steps']} PMOD pre-training steps, {t['seconds']:.0f} s in all"
            f" ({pre['seconds']:.0f} s pre-training)"
            if pre
            else f" in {t['seconds']:.0f} s"
        )
        + "; val "
        + ", ".join(
            f"{mode} SRCC {m['srcc']:.3f} PLCC {m['plcc']:.3f}"
            + (f" ({m['parse_failures']} unparsed)" if m["parse_failures"] else "")
            for mode, m in val.items()
        )
    )


def _count(n: int | dict) -> str:
    """`1004` or, per task, `1004 score + 200 describe`."""
    return " + ".join(f"{v} {k}" for k, v in n.items()) if isinstance(n, dict) else str(n)


def _write_loss_plots(history: list[dict], table: str | None, picture: str | None) -> list[Path]:
    """The loss per optimizer step (both phases, one step count) as a table and a picture."""
    import pandas as pd

    from qualitune import plots

    df = pd.DataFrame(history, columns=["step", "phase", "task", "epoch", "loss", "lr"])
    written = []
    if table:
        Path(table).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(table, index=False)
        written.append(Path(table))
    if picture and len(df):
        plots.loss_curve(df, picture)
        written.append(Path(picture))
    return written
