"""Evaluating a scorer from params: the `evaluate` stage's work (also the retraining flow's), per split,
dataset and scoring mode.

Writes DVC metrics (`evaluate.metrics`: SRCC, KRCC, PLCC raw and after the VQEG logistic fit, RMSE,
final, parse failures, instability, grounding for two-stage scorers), the predicted-vs-MOS scatter
(a DVC plot), all predictions, the logit-lens table + heatmap and the attention-share table + plot,
and logs them to MLflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from qualitune.jsonable import numeric_only

log = logging.getLogger("qualitune.evaluate")


def _sample(df, n: int, seed: int):
    return df if len(df) <= n else df.sample(n=n, random_state=seed)


def evaluate_scorer(params: dict[str, Any], *, scorer_ref: str | None = None) -> dict[str, Any]:
    import pandas as pd

    from qualitune import analysis, plots
    from qualitune.baselines import evaluate_baselines
    from qualitune.evaluate import evaluate_split
    from qualitune.manifest import read_manifest
    from qualitune.progress import Progress
    from qualitune.scorer import Scorer
    from qualitune.sections import EvaluateSettings, ModelSettings, PmodSettings, TrainStageSettings
    from qualitune.tracking import log_artifacts, log_metrics, start_run, tracking_settings

    cfg = EvaluateSettings.from_params(params)
    ref = scorer_ref or TrainStageSettings.value(params, "out")
    data = cfg.data or PmodSettings.value(params, "out")
    df = read_manifest(data)
    scorer = Scorer.load(ref, feature_store=ModelSettings.value(params, "feature_cache"))
    modes, batch, seed = list(cfg.modes), cfg.batch_size, cfg.seed
    out_paths = {k: Path(getattr(cfg, k)) for k in ("metrics", "predictions", "scatter")}
    for p in out_paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)

    metrics: dict[str, Any] = {}
    preds = []
    for split in cfg.splits:
        part = df[df["split"] == split]
        if len(part) == 0:
            log.warning("no %s rows in %s; skipped", split, data)
            continue
        m, p = evaluate_split(scorer, part, modes=modes, batch_size=batch)
        metrics[split] = m
        for mode, table in p.items():
            preds.append(table.assign(mode=mode, dataset=part["dataset"].astype(str).to_numpy()))
        if part["dataset"].nunique() > 1:
            metrics[f"{split}_by_dataset"] = {
                name: evaluate_split(scorer, g, modes=modes, batch_size=batch)[0]
                for name, g in part.groupby("dataset")
            }
    splits = [s for s in cfg.splits if s in metrics]
    log.info("baselines: encoder features of %d items for the linear probe", len(df))
    progress = Progress(len(df), "linear probe: encoder features", "files")
    base, probe_info = evaluate_baselines(scorer, df, splits, batch_size=batch, on_progress=progress.report)
    for split in splits:
        metrics[split]["baselines"] = base.get(split, {})
    metrics["linear_probe"] = probe_info
    predictions = pd.concat(preds, ignore_index=True)
    predictions.drop(columns=["levels"], errors="ignore").to_csv(out_paths["predictions"], index=False)
    scatter = predictions[predictions["mode"] == modes[0]][["item_id", "split", "mos_norm", "score_1_5"]]
    scatter.to_csv(out_paths["scatter"], index=False)
    plots.scatter_by_split(scatter, cfg.scatter_plot)

    val = df[df["split"] == "val"]
    inst = cfg.instability
    inst_items = _sample(val, inst.sample, seed)["path"].astype(str).tolist()
    metrics["instability"] = analysis.instability(
        scorer,
        inst_items,
        repeats=inst.repeats,
        temperature=inst.temperature,
        paraphrases=list(inst.paraphrases),
        batch_size=batch,
        seed=seed,
    )
    if scorer.spec.two_stage:
        val_pred = predictions[(predictions["split"] == "val") & (predictions["mode"] == modes[0])]
        metrics["grounding"] = analysis.grounding(
            val_pred["description"].fillna("").tolist(), val_pred["score_1_5"].tolist()
        )

    lens_cfg = cfg.lens
    lens_items = _sample(val, lens_cfg.sample, seed)["path"].astype(str).tolist()
    lens = analysis.logit_lens(scorer, lens_items, top_k=lens_cfg.top_k)
    lens.to_csv(lens_cfg.table, index=False)
    plots.logit_lens_heatmap(
        analysis.candidate_lens(scorer, lens_items),
        lens_cfg.heatmap,
        title="logit lens: answer-token probability per layer",
    )
    att_cfg = cfg.attention
    att_items = _sample(val, att_cfg.sample, seed)["path"].astype(str).tolist()
    att = analysis.attention_shares(scorer, att_items)
    att.to_csv(att_cfg.table, index=False)
    plots.attention_shares(att, att_cfg.plot)

    out_paths["metrics"].write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    with start_run(
        tracking_settings(params),
        "evaluate",
        params={"evaluate": dataclasses.asdict(cfg), "scorer": str(ref)},
        tags={"stage": "evaluate"},
    ):
        log_metrics(numeric_only(metrics))
        for path in (*out_paths.values(), lens_cfg.table, att_cfg.table):
            log_artifacts(path, "evaluate")
        # the pictures, together on the run page: this run's and the PMOD stage's calibration curves
        for path in (
            cfg.scatter_plot,
            lens_cfg.heatmap,
            att_cfg.plot,
            PmodSettings.value(params, "calibration_png"),
        ):
            if path and Path(path).is_file():
                log_artifacts(path, "plots")
    log.debug("instability: %s", metrics["instability"])
    return metrics


def summary_line(metrics: dict[str, Any], mode: str) -> str:
    """`evaluate: test SRCC 0.832 PLCC 0.857 (probe 0.770, PMOD mean 0.554); val ...; level changed 0.31`."""
    parts = []
    for split in (s for s in ("test", "val", "train") if s in metrics):
        m, base = metrics[split].get(mode, {}), metrics[split].get("baselines", {})
        extra = ", ".join(f"{n.replace('_', ' ')} {b['srcc']:.3f}" for n, b in base.items())
        failures = m.get("parse_failures", 0) + m.get("media_errors", 0)
        parts.append(
            f"{split} SRCC {m.get('srcc', float('nan')):.3f} PLCC {m.get('plcc', float('nan')):.3f}"
            + (f" ({extra})" if extra else "")
            + (f", {failures} not scored" if failures else "")
        )
    inst = metrics.get("instability", {}).get("share_level_changed")
    tail = f"; level changed on {inst:.0%} of repeated queries" if inst is not None else ""
    return f"evaluate ({mode}): " + "; ".join(parts) + tail
