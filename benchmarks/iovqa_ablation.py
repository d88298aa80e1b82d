"""IOVQA's label ablation as one command: decimal labels vs integer labels vs integer + integer-only mask.

    python benchmarks/iovqa_ablation.py [--params params.yaml] [--epochs N] [--out reports/ablation.json]

Each variant trains with the `train` stage's own function (`train_scorer`, params from params.yaml
with the variant's overrides, its own output folder and MLflow run) on the same data and seed, then
is scored on the val and test splits in both modes. Prints a markdown table and writes JSON.
The paper's figures (final = (SRCC + PLCC) / 2 on VQualA): 0.60 -> 0.63 -> 0.64.

The same variants as DVC experiments:
    dvc exp run --queue -n decimal -S train.answer_format=decimal -S train.loss_on=answer
    dvc exp run --queue -n integer -S train.answer_format=integer -S train.loss_on=answer
    dvc exp run --queue -n integer-mask -S train.answer_format=integer -S train.loss_on=value
    dvc queue start && dvc exp show --only-changed
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

VARIANTS = {
    "decimal": {"answer_format": "decimal", "loss_on": "answer"},
    "integer": {"answer_format": "integer", "loss_on": "answer"},
    "integer + mask": {"answer_format": "integer", "loss_on": "value"},
}


def main(argv: list[str] | None = None) -> int:
    from qualitune.config import deep_merge, load_params
    from qualitune.evaluate import evaluate_split
    from qualitune.manifest import read_manifest
    from qualitune.pipeline.train import train_scorer
    from qualitune.scorer import Scorer
    from qualitune.sections import PmodSettings, TrainStageSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--epochs", type=float, default=None, help="override train.epochs for every variant")
    ap.add_argument("--out", default="reports/ablation.json")
    ap.add_argument("--models", default="models/ablation")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    params = load_params(args.params)
    df = read_manifest(TrainStageSettings.from_params(params).data or PmodSettings.from_params(params).out)
    results = {}
    for name, overrides in VARIANTS.items():
        slug = name.replace(" + ", "-")
        train_over = dict(overrides, checkpoint_every=0)
        if args.epochs is not None:
            train_over["epochs"] = args.epochs
        p = deep_merge(params, {"train": train_over})
        t0 = time.perf_counter()
        train_scorer(
            p,
            out_dir=f"{args.models}/{slug}",
            metrics_path=f"{args.models}/{slug}/train_metrics.json",
            run_name=f"ablation-{slug}",
        )
        scorer = Scorer.load(f"{args.models}/{slug}")
        row = {"seconds": round(time.perf_counter() - t0, 1)}
        for split in ("val", "test"):
            m, _ = evaluate_split(scorer, df[df["split"] == split], batch_size=16)
            row[split] = m
        results[name] = row
        print(f"{name}: done in {row['seconds']} s", file=sys.stderr)

    lines = [
        "| labels | split | expected SRCC | expected PLCC | expected final | greedy final | greedy unparsed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        for split in ("val", "test"):
            e, g = row[split]["expected"], row[split]["greedy"]
            lines.append(
                f"| {name} | {split} | {e['srcc']:.3f} | {e['plcc']:.3f} | {e['final']:.3f} | "
                f"{g['final']:.3f} | {g['parse_failures']}/{g['n'] + g['n_missing']} |"
            )
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
