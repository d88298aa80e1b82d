"""`qualitune tune [--params params.yaml] [--n-trials N] [--storage URL] [--study NAME]`: one search worker.

Runs what the `tune` stage runs; options override the `tune` params section. Start it several times
(processes, machines) on the same storage to search in parallel: together they finish `n_trials`.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune",
        help="Optuna search over the train stage (params: tune, model, train, mlflow); writes tune.out",
        description="A search worker: creates or joins the study `tune.study_name` in `tune.storage`, trains "
        "trials until the study has `tune.n_trials` finished (complete or pruned) trials, then writes the "
        "best trial's params overlay to `tune.out`. Run it several times on one storage for parallel "
        "workers; run it again to resume an interrupted study or, with a larger --n-trials, to extend it.",
    )
    _add_arguments(p)
    p.set_defaults(func=run)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml")
    p.add_argument(
        "--n-trials", type=int, default=None, help="finished trials the study should have in total"
    )
    p.add_argument("--storage", default=None, help="SQLAlchemy URL of the study storage (tune.storage)")
    p.add_argument("--study", default=None, help="study name (tune.study_name)")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop this worker after S seconds (tune.timeout_s)"
    )


def run(args: argparse.Namespace) -> int:
    from qualitune.config import load_params
    from qualitune.pipeline.tune import format_summary, run_search

    params = load_params(args.params)
    tune = dict(params.get("tune") or {})
    for key, value in (
        ("n_trials", args.n_trials),
        ("storage", args.storage),
        ("study_name", args.study),
        ("timeout_s", args.timeout),
    ):
        if value is not None:
            tune[key] = value
    params["tune"] = tune
    summary = run_search(params)
    print(format_summary(summary))
    if not summary["written"] and summary.get("running", 0) == 0:
        print(f"qualitune tune: no trial completed, {summary['out']} not written", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m qualitune.commands.tune`: the same command without the `qualitune` launcher."""
    from qualitune.errors import EXIT_USER_ERROR, QualituneError
    from qualitune.logs import setup as setup_logging

    parser = argparse.ArgumentParser(prog="qualitune tune")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        setup_logging()
        return run(args)
    except QualituneError as exc:
        print(f"qualitune tune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
