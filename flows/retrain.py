"""The scheduled retraining flow: new data in, `dvc repro`, the registry gate's verdict out.

    python flows/retrain.py --project .            # one run now, without a server (ephemeral API)
    qualitune schedule --cron "0 3 * * 1"          # a deployment on a cron schedule (work pool)

Steps (each a Prefect task; the DVC ones retry on transient failures):

1. ``dvc update`` on the project's DVC import files (``dvc import`` / ``dvc import-url``), so an
   upstream dataset that grew is pulled in;
2. the raw data folder (params ``ingest.root``) compared with the snapshot of the last successful run:
   files added, changed, removed;
3. ``dvc status``: is any stage stale (new data, edited params or code)?
4. if so, ``dvc repro [targets]`` -- the pipeline exactly as ``dvc.yaml`` defines it; the registry gate
   is its ``register`` stage. If nothing changed, the repro is skipped and the summary says so;
5. the summary (returned dict, a Markdown artifact ``qualitune-retrain``, the log): what changed,
   which stages reran, and whether ``models:/<name>@champion`` moved (versions and finals from
   ``register.report``).

The snapshot (``.qualitune/retrain_snapshot.json``) is only written after a successful run, so a
failed run reports the same changes again next time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as flow_run_ctx
from prefect.runtime import task_run as task_run_ctx

from qualitune import retrain as rt
from qualitune.config import load_params

FLOW_NAME = "qualitune-retrain"
ARTIFACT_KEY = "qualitune-retrain"
LOG_FILES = 50  # file names logged per kind of change (the summary counts all)


def transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a DVC failure only when its output looks transient (a held
    DVC lock, a busy database, an unreachable server); a stage's own error fails at once."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # the exception the task raised
            exc = e
    if isinstance(exc, rt.DvcError):
        return exc.transient
    return isinstance(exc, (ConnectionError, TimeoutError))


def _log_line(line: str) -> None:
    if line.strip():
        get_run_logger().info("dvc | %s", line)


@task(name="dvc-update-imports", cache_policy=NO_CACHE)
def update_imports(project: str) -> list[dict[str, Any]]:
    files = rt.import_files(project)
    if not files:
        get_run_logger().info("no DVC import files in %s", project)
        return []
    get_run_logger().info("dvc update %s", " ".join(files))
    return rt.dvc_update(project, files, on_line=_log_line)


@task(name="detect-raw-changes", cache_policy=NO_CACHE)
def detect_changes(project: str, raw_root: str, snapshot: str) -> dict[str, Any]:
    root = Path(project) / raw_root
    old = rt.load_snapshot(Path(project) / snapshot, raw_root)
    files = rt.snapshot_dir(root, old)
    changes = rt.diff_snapshots(old, files)
    if changes.baseline:
        get_run_logger().info(
            "raw data %s: %d files (no snapshot yet: this run is the baseline)", raw_root, len(files)
        )
    else:
        get_run_logger().info(
            "raw data %s: %d files; %d added, %d changed, %d removed since the last snapshot",
            raw_root,
            len(files),
            len(changes.added),
            len(changes.changed),
            len(changes.removed),
        )
        for kind in ("added", "changed", "removed"):
            paths = getattr(changes, kind)
            for rel in paths[:LOG_FILES]:
                get_run_logger().info("  %s: %s", kind, rel)
            if len(paths) > LOG_FILES:
                get_run_logger().info("  %s: ... and %d more", kind, len(paths) - LOG_FILES)
    return {"changes": changes.to_dict(), "files": files}


@task(name="dvc-status", cache_policy=NO_CACHE)
def pipeline_status(project: str, targets: list[str]) -> dict[str, Any]:
    status = rt.dvc_status(project, targets)
    get_run_logger().info("dvc status: %s", "up to date" if not status else sorted(status))
    return status


@task(name="dvc-repro", cache_policy=NO_CACHE)
def repro(project: str, targets: list[str], timeout_s: float | None) -> dict[str, Any]:
    attempt = task_run_ctx.run_count
    get_run_logger().info("dvc repro %s (attempt %d)", " ".join(targets) or "(all stages)", attempt)
    result = rt.dvc_repro(project, targets, on_line=_log_line, timeout_s=timeout_s)
    return {**result.to_dict(), "attempts": attempt}


@flow(name=FLOW_NAME, log_prints=True)
def retrain(
    project_dir: str = ".",
    targets: list[str] | None = None,
    retries: int = 2,
    retry_delay_s: float = 30.0,
    update_imports_first: bool = True,
    repro_timeout_s: float | None = None,
    snapshot: str = rt.SNAPSHOT,
) -> dict[str, Any]:
    """Retrain when the data changed: ``dvc update`` imports, diff the raw data folder, ``dvc repro``
    when anything is stale, report what changed and whether the champion moved.

    ``targets``: stages to reproduce (default: the whole pipeline). ``retries``/``retry_delay_s``:
    attempts after a transient DVC failure. ``repro_timeout_s``: kill a repro that runs longer.
    """
    t0 = time.perf_counter()
    logger = get_run_logger()
    project = str(Path(project_dir).resolve())
    targets = list(targets or [])
    params = load_params(Path(project) / "params.yaml")
    raw_root = rt.raw_data_root(params)
    report = (params.get("register") or {}).get("report", "reports/register.json")
    retry = {"retries": retries, "retry_delay_seconds": retry_delay_s, "retry_condition_fn": transient_only}

    imports = update_imports.with_options(**retry)(project) if update_imports_first else []
    detected = detect_changes(project, raw_root, snapshot)
    changes = detected["changes"]
    stale = pipeline_status.with_options(**retry)(project, targets)
    new_imports = [i["file"] for i in imports if i["changed"]]

    repro_result: dict[str, Any] | None = None
    if stale:
        repro_result = repro.with_options(**retry)(project, targets, repro_timeout_s)
        if repro_result["ran"]:
            status = "retrained"
        else:  # e.g. outputs a failed run deleted, checked out again from DVC's run cache
            status = "restored" if repro_result["cached"] else "up to date"
    else:
        status = "no change"
    rt.save_snapshot(Path(project) / snapshot, raw_root, detected["files"])

    register_ran = bool(repro_result and "register" in repro_result["ran"])
    outcome = rt.register_outcome(Path(project) / report)
    champion = rt.champion_sentence(outcome, register_ran)
    n_changed = len(changes["added"]) + len(changes["changed"]) + len(changes["removed"])
    if status == "no change":
        if changes["baseline"]:
            what = (
                f"No change: first run, baseline snapshot of {len(changes['added'])} files recorded; every "
                "stage is up to date; `dvc repro` skipped."
            )
        elif n_changed == 0:
            what = "No change: no new or changed data and every stage is up to date; `dvc repro` skipped."
        else:
            what = (
                f"{n_changed} raw file change(s) since the last snapshot, but DVC has them already "
                "(the pipeline is up to date); `dvc repro` skipped."
            )
    else:
        ran = repro_result["ran"] if repro_result else []
        what = (
            f"{'Baseline run' if changes['baseline'] else f'{n_changed} raw file change(s)'}"
            + (f", new data from {len(new_imports)} DVC import(s)" if new_imports else "")
            + f"; stale stages {sorted(stale)}; reran {len(ran)} stage(s): {', '.join(ran) or 'none'}."
        )
    summary: dict[str, Any] = {
        "status": status,
        "message": what,
        "project": project,
        "targets": targets,
        "raw_root": raw_root,
        "changes": changes,
        "imports": imports,
        "stale": sorted(stale),
        "repro": repro_result,
        "register_ran": register_ran,
        "register": outcome if register_ran else None,
        "champion_moved": bool(register_ran and outcome and outcome["champion_moved"]),
        "champion": champion,
        "champion_version": outcome["champion_after"] if outcome else None,
        "flow_run_id": str(flow_run_ctx.id) if flow_run_ctx.id else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    markdown = rt.summary_markdown(summary)
    artifact = create_markdown_artifact(
        markdown=markdown, key=ARTIFACT_KEY, description=f"{status}: {champion}"
    )
    summary["artifact_id"] = str(artifact)
    logger.info("retrain summary: %s %s", what, champion)
    logger.info("\n%s", markdown)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the retraining flow once, now.")
    p.add_argument("--project", default=".", help="project root (dvc.yaml, params.yaml)")
    p.add_argument("--target", action="append", default=None, help="stage to reproduce (repeatable)")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--retry-delay", type=float, default=30.0)
    args = p.parse_args(argv)
    summary = retrain(
        project_dir=args.project, targets=args.target, retries=args.retries, retry_delay_s=args.retry_delay
    )
    print(f"{summary['status']}: {summary['message']} {summary['champion']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
