"""`qualitune experiment OVERLAY [OVERLAY ...] [--name NAME] [--set key=value ...] [--target STAGE]`

Runs the pipeline (`dvc exp run`) with the params of committed overlays such as
`configs/params/real-data.yaml` (later overlays win) plus `--set` overrides, as a named DVC experiment, then puts the
workspace's params.yaml and dvc.lock back (`qualitune.experiment`). The overlay sends every output to
its own folders, so the default pipeline's files are untouched. The last line printed is
`scorer: PATH`, the trained scorer's folder. Compare experiments with `dvc exp show` / `dvc exp diff`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="run the pipeline with a params overlay as a named DVC experiment",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "overlays",
        nargs="+",
        help="params overlay YAMLs (keys of params.yaml; later ones win), e.g. configs/params/real-data.yaml",
    )
    p.add_argument("--target", action="append", default=[], help="a stage to run up to (default: all)")
    p.add_argument("--name", help="the experiment's name in `dvc exp show` (a rerun replaces it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more params value")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import subprocess

    from qualitune.experiment import run_experiment

    try:
        params = run_experiment(args.overlays, name=args.name, sets=args.set, targets=args.target)
    except subprocess.CalledProcessError as exc:
        print(f"qualitune experiment: dvc exp run failed (exit {exc.returncode}); its message is above")
        return exc.returncode or 1
    print(f"metrics: {params['evaluate']['metrics']}")
    print(f"scorer: {params['train']['out']}")
    return 0
