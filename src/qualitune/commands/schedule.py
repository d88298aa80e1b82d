"""`qualitune schedule --cron "0 3 * * 1" [--pool NAME] [--name NAME]`: the retraining flow on a schedule.

Registers a deployment of ``flows/retrain.py:retrain`` (code from the project folder, no image) with a
cron schedule on the configured Prefect API (``PREFECT_API_URL``), in a work pool of type ``process``.
A worker on a machine that has the project (``prefect worker start --pool NAME``) then runs it: each
run does ``dvc update`` / ``dvc status`` / ``dvc repro`` in the project and reports whether the
champion moved. Running the command again updates the deployment (same flow and name).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qualitune.errors import QualituneError

ENTRYPOINT = "flows/retrain.py:retrain"
FLOW_NAME = "qualitune-retrain"  # flows/retrain.py FLOW_NAME


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "schedule",
        help="deploy the retraining flow (flows/retrain.py) on a cron schedule to a Prefect process work pool",
        description="Registers (or updates) a Prefect deployment of the retraining flow with a cron schedule, "
        "against the Prefect API in PREFECT_API_URL, in a work pool of type process. Start a worker with "
        "`prefect worker start --pool NAME` on the machine that has the project; trigger a run by hand with "
        "`prefect deployment run qualitune-retrain/NAME`.",
    )
    p.add_argument("--cron", required=True, help='cron expression, e.g. "0 3 * * 1" (Mondays 03:00)')
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the cron expression (default UTC)")
    p.add_argument("--pool", default="qualitune", help="work pool (type process; default qualitune)")
    p.add_argument("--name", default="weekly", help="deployment name (default weekly)")
    p.add_argument("--project", default=".", help="project root the worker runs in (default: here)")
    p.add_argument(
        "--target", action="append", default=None, help="stage to reproduce (repeatable; default: all)"
    )
    p.add_argument("--retries", type=int, default=2, help="retries of a DVC task after a transient failure")
    p.add_argument("--retry-delay", type=float, default=60.0, help="seconds between those retries")
    p.add_argument("--create-pool", action="store_true", help="create the work pool if it does not exist")
    p.add_argument("--paused", action="store_true", help="register the schedule paused")
    p.set_defaults(func=run)


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise QualituneError(
            "no Prefect API configured: a schedule needs a running server. Start one with "
            "`prefect server start` and point clients at it with "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` (or export PREFECT_API_URL)"
        )
    return url


def _check_cron(cron: str, timezone: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as exc:
        first = str(exc).splitlines()
        raise QualituneError(
            f"invalid --cron {cron!r} or --timezone {timezone!r}: {first[-1].strip()}"
        ) from exc


def ensure_process_pool(name: str, create: bool) -> str:
    """The work pool's type; creates a process pool when asked and it is missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            if not create:
                raise QualituneError(
                    f"work pool {name!r} not found on {_api_url()}: create it with "
                    f"`prefect work-pool create {name} --type process` or pass --create-pool"
                ) from None
            from prefect.workers.process import ProcessWorker

            pool = client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            print(f"created work pool {name!r} (type process)")
    if pool.type != "process":
        raise QualituneError(
            f"work pool {name!r} has type {pool.type!r}; this command deploys the project folder as is, "
            "which needs a `process` pool (a worker on a machine with the project)"
        )
    return pool.type


def deploy(args: argparse.Namespace) -> Any:
    import httpx

    project = Path(args.project).resolve()
    if not (project / ENTRYPOINT.split(":")[0]).is_file() or not (project / "dvc.yaml").is_file():
        raise QualituneError(
            f"{project} is not a qualitune project (needs dvc.yaml and {ENTRYPOINT.split(':')[0]})"
        )
    if args.retries < 0 or args.retry_delay < 0:
        raise QualituneError("--retries and --retry-delay must be >= 0")
    _check_cron(args.cron, args.timezone)
    url = _api_url()
    try:
        return _deploy(args, project, url)
    except httpx.TransportError as exc:  # not a 74-line traceback: which URL, and what to do
        raise QualituneError(
            f"the Prefect API at {url} cannot be reached ({type(exc).__name__}: {exc}). Start a "
            "server with `prefect server start`, or point PREFECT_API_URL at a running one "
            "(`prefect config set PREFECT_API_URL=http://HOST:4200/api`)"
        ) from None


def _deploy(args: argparse.Namespace, project: Path, url: str) -> Any:
    from prefect import flow
    from prefect.schedules import Cron

    ensure_process_pool(args.pool, args.create_pool)
    remote = flow.from_source(source=str(project), entrypoint=ENTRYPOINT)
    parameters: dict[str, Any] = {
        "project_dir": str(project),
        "retries": args.retries,
        "retry_delay_s": args.retry_delay,
    }
    if args.target:
        parameters["targets"] = list(args.target)
    deployment_id = remote.deploy(
        name=args.name,
        work_pool_name=args.pool,
        schedule=Cron(args.cron, timezone=args.timezone),
        parameters=parameters,
        paused=args.paused,
        tags=["qualitune", "retrain"],
        description=f"qualitune retraining of {project}: dvc update, dvc repro when data changed, registry gate",
        print_next_steps=False,
    )
    print(
        f"deployment {FLOW_NAME}/{args.name} ({deployment_id}) on {url}: cron {args.cron!r} ({args.timezone}), "
        f"work pool {args.pool!r}, project {project}"
    )
    print(f"  start a worker:  prefect worker start --pool {args.pool}")
    print(f"  run it now:      prefect deployment run '{FLOW_NAME}/{args.name}'")
    return deployment_id


def run(args: argparse.Namespace) -> int:
    deploy(args)
    return 0
