"""`qualitune train [--params params.yaml]`: the `train` stage outside DVC (same code, same params)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune the VLM scorer (params: model, train, mlflow) and validate it",
        description="Runs exactly what `dvc repro train` runs. For several processes/GPUs use "
        "`accelerate launch -m qualitune.stages.train`.",
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data", default=None, help="manifest with PMOD columns (default: pmod.out from params)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from qualitune.config import load_params
    from qualitune.pipeline.train import train_scorer

    train_scorer(load_params(args.params), data=args.data)
    return 0
