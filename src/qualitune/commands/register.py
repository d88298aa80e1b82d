"""`qualitune register [--params params.yaml] [--scorer DIR] [--data MANIFEST]`: the `register` stage
outside DVC (same code, same params)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "register",
        help="log the scorer to the MLflow registry; promote it to champion if it beats the current one",
        description="Registers a new version of mlflow.model_name (alias challenger), scores it and the "
        "current champion on the same val split, and moves the champion alias only if the challenger's "
        "final = (SRCC + PLCC) / 2 is >= register.min_final and >= the champion's + register.margin. "
        "Runs exactly what `dvc repro register` runs; prints the decision as JSON.",
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--scorer", default=None, help="scorer folder to register (default: train.out)")
    p.add_argument(
        "--data",
        default=None,
        help="manifest whose val split is compared on (default: train.data or pmod.out)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.config import load_params
    from qualitune.pipeline.register import register_scorer

    decision = register_scorer(load_params(args.params), scorer_dir=args.scorer, data=args.data)
    print(json.dumps(decision.to_dict(), indent=2))
    return 0
