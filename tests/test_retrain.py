"""The retraining flow (flows/retrain.py) on small real copies of the project, against Prefect's test
harness: real `dvc update` / `dvc status` / `dvc repro` subprocesses, real stages.

Fast tests reproduce the `ingest` stage only (seconds); the slow one runs the whole pipeline,
training and the registry gate included, and checks the summary against the MLflow registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from project_factory import RAW, add_items, make_project
from qualitune import retrain as rt

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["ingest"]


def _run_counts(flow_run_id) -> dict[str, int]:
    """run_count of each task run of a flow run, by task name, read back from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            limit=50,  # prefect 3.8.8's sync client sends null limit/sort, which its server refuses
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return {r.name.rsplit("-", 1)[0]: r.run_count for r in runs}  # "dvc-repro-1a2" -> "dvc-repro"


def _artifact(summary: dict) -> str:
    """The Markdown artifact the flow run of `summary` created, read back from the Prefect API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        resp = client.request("GET", "/artifacts/{id}", path_params={"id": summary["artifact_id"]})
    resp.raise_for_status()
    art = resp.json()
    assert art["key"] == "qualitune-retrain" and art["type"] == "markdown"
    assert art["flow_run_id"] == summary["flow_run_id"]
    return art["data"]


# ---------------------------------------------------------------------------------------------------------
# Building blocks (no DVC, no Prefect)


def test_snapshot_diff_added_changed_removed_and_rehash_only_moved_files(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        (root / name).write_bytes(name.encode())
    (root / ".hidden").write_text("x")
    first = rt.snapshot_dir(root)
    assert sorted(first) == ["a.png", "b.png", "sub/c.png"]
    assert rt.diff_snapshots(None, first) == rt.FileChanges(
        added=("a.png", "b.png", "sub/c.png"), baseline=True
    )

    (root / "b.png").write_bytes(b"other bytes")
    (root / "sub/c.png").unlink()
    (root / "d.png").write_bytes(b"d")
    (root / "a.png").touch()  # new mtime, same bytes: not a change
    hashed: list[str] = []
    md5 = rt._md5
    monkeypatch.setattr(rt, "_md5", lambda p: hashed.append(p.name) or md5(p))
    second = rt.snapshot_dir(root, first)
    assert sorted(hashed) == ["a.png", "b.png", "d.png"]  # only files whose size or mtime moved
    changes = rt.diff_snapshots(first, second)
    assert changes == rt.FileChanges(added=("d.png",), changed=("b.png",), removed=("sub/c.png",))
    assert changes.any and not rt.diff_snapshots(second, second).any

    path = tmp_path / "snap" / "s.json"
    rt.save_snapshot(path, "raw", second)
    assert rt.load_snapshot(path, "raw") == second
    assert rt.load_snapshot(path, "elsewhere") is None  # a snapshot of another folder is no baseline
    with pytest.raises(ValueError, match="does not exist"):
        rt.snapshot_dir(tmp_path / "gone")


def test_repro_output_parsing_and_transient_failures():
    out = "\n".join(
        [
            "'raw.dvc' didn't change, skipping",
            "Stage 'build_demo' didn't change, skipping",
            "Running stage 'ingest':",
            "> python -m qualitune.stages.ingest",
            "Stage 'validate' is cached - skipping run, checking out outputs",
            "Running stage 'labels':",
            "Updating lock file 'dvc.lock'",
        ]
    )
    res = rt.parse_repro_output(out)
    assert res.ran == ["ingest", "labels"]
    assert res.cached == ["validate"]
    assert res.unchanged == ["raw.dvc", "build_demo"]
    lock = rt.DvcError(["dvc", "repro"], 1, "ERROR: Unable to acquire lock. Most likely another DVC process")
    assert lock.transient
    assert rt.DvcError(["dvc", "repro"], 1, "sqlite3.OperationalError: database is locked").transient
    gate = rt.DvcError(["dvc", "repro"], 1, "ERROR: failed to reproduce 'validate': exited with 1")
    assert not gate.transient


def test_register_outcome_and_champion_sentence(tmp_path):
    assert rt.register_outcome(tmp_path / "missing.json") is None
    report = tmp_path / "register.json"
    report.write_text(
        json.dumps(
            {
                "model_name": "qualitune",
                "promoted": False,
                "reason": "challenger final 0.1 < champion final 0.2 + margin 0.0 = 0.2",
                "challenger_version": "3",
                "challenger_final": 0.1,
                "champion_version": "2",
                "champion_final": 0.2,
                "champion_after": "2",
            }
        )
    )
    kept = rt.register_outcome(report)
    assert kept["champion_moved"] is False and kept["champion_after"] == "2"
    assert "stays v2" in rt.champion_sentence(kept, register_ran=True)
    assert "did not run" in rt.champion_sentence(kept, register_ran=False)
    report.write_text(json.dumps({**json.loads(report.read_text()), "promoted": True, "champion_after": "3"}))
    moved = rt.register_outcome(report)
    assert moved["champion_moved"] and "v2 -> v3" in rt.champion_sentence(moved, register_ran=True)


# ---------------------------------------------------------------------------------------------------------
# The flow on a copy of the project (up to the data gate)


@pytest.fixture(scope="module")
def runs(flows, tmp_path_factory):
    """A project copy taken through: a first run (baseline), a no-change run, then new, changed and
    removed raw files."""
    project = make_project(tmp_path_factory.mktemp("retrain") / "project", n_items=12)
    kw = {"project_dir": str(project), "targets": TARGETS, "retries": 1, "retry_delay_s": 0.5}
    first = flows.retrain(**kw)
    lock_mtime = (project / "dvc.lock").stat().st_mtime_ns
    again = flows.retrain(**kw)
    again_md = _artifact(again)
    assert (project / "dvc.lock").stat().st_mtime_ns == lock_mtime  # nothing was reproduced

    raw = project / RAW
    new = add_items(raw, 12, 15)
    shutil.copy2(raw / "images/img001.png", raw / "images/img000.png")  # other bytes, same name
    (raw / "notes.txt").write_text("not media, not in labels.csv: ingest ignores it\n")
    changed = flows.retrain(**kw)
    changed_md = _artifact(changed)
    return {
        "project": project,
        "kw": kw,
        "first": first,
        "again": again,
        "again_md": again_md,
        "new": new,
        "changed": changed,
        "changed_md": changed_md,
    }


def test_first_run_is_a_baseline_and_reproduces_the_targets(runs):
    first = runs["first"]
    assert first["status"] == "retrained"
    assert first["changes"]["baseline"] and "labels.csv" in first["changes"]["added"]
    assert len(first["changes"]["added"]) == 13  # 12 images + labels.csv
    assert first["repro"]["ran"] == ["ingest"] and first["repro"]["attempts"] == 1
    assert "build_demo" not in first["repro"]["ran"]  # not upstream of the targets
    assert first["stale"]  # dvc status listed what the repro then ran
    assert not first["register_ran"] and first["register"] is None and not first["champion_moved"]
    assert "No registry decision" in first["champion"]
    assert (runs["project"] / "data/manifest.parquet").is_file()
    assert (runs["project"] / rt.SNAPSHOT).is_file()


def test_a_run_without_changes_skips_the_repro_and_says_so(runs):
    again = runs["again"]
    assert again["status"] == "no change" and again["repro"] is None and again["stale"] == []
    assert not again["changes"]["baseline"] and not again["changes"]["added"]
    assert again["message"].startswith("No change") and "skipped" in again["message"]
    assert "# qualitune retrain: no change" in runs["again_md"]
    assert "`dvc repro` skipped" in runs["again_md"]


def test_new_changed_and_extra_files_are_listed_and_the_data_stages_rerun(runs):
    ch = runs["changed"]
    expected_added = sorted([*runs["new"], "notes.txt"])
    assert ch["changes"]["added"] == expected_added
    assert ch["changes"]["changed"] == ["images/img000.png", "labels.csv"]
    assert ch["changes"]["removed"] == []
    assert ch["status"] == "retrained" and ch["repro"]["ran"] == ["ingest"]
    assert "ingest" in ch["stale"]
    assert ch["message"].startswith("6 raw file change(s)")
    md = runs["changed_md"]
    assert "`images/img012.png`" in md and "`labels.csv`" in md and "**Stages rerun**: `ingest`" in md
    from qualitune.manifest import read_manifest

    assert len(read_manifest(runs["project"] / "data/manifest.parquet")) == 15


def test_a_held_dvc_lock_is_retried(runs, flows, monkeypatch):
    """Another DVC process holding the repo lock is a transient failure: the repro task is retried."""
    import zc.lockfile

    project = runs["project"]
    add_items(project / RAW, 15, 16)
    failures: list[rt.DvcError] = []
    original = rt.run_dvc

    def run_dvc(args, cwd, **kw):
        if args[0] == "repro" and not failures:
            lock = zc.lockfile.LockFile(str(Path(cwd) / ".dvc" / "tmp" / "lock"))  # "another DVC process"
            try:
                return original(args, cwd, **kw)
            except rt.DvcError as exc:
                failures.append(exc)
                raise
            finally:
                lock.close()
        return original(args, cwd, **kw)

    monkeypatch.setattr(rt, "run_dvc", run_dvc)
    state = flows.retrain(**{**runs["kw"], "retries": 2}, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert len(failures) == 1 and "Unable to acquire lock" in failures[0].output
    assert summary["repro"]["attempts"] == 2 and summary["repro"]["ran"] == ["ingest"]
    assert summary["changes"]["added"] == ["images/img015.png"]
    assert _run_counts(state.state_details.flow_run_id)["dvc-repro"] == 2


def test_changes_that_dvc_already_has_are_listed_without_a_repro(runs, flows):
    """Someone ran `dvc repro` by hand after adding data: the files are new to the flow's snapshot,
    but nothing is stale, so the flow lists them and does not reproduce."""
    project = runs["project"]
    added = add_items(project / RAW, 16, 17)
    subprocess.run([sys.executable, "-m", "dvc", "repro", *TARGETS], cwd=project, check=True, capture_output=True,
                   env=rt.dvc_env(project))  # fmt: skip
    summary = flows.retrain(**runs["kw"])
    assert summary["status"] == "no change" and summary["repro"] is None and summary["stale"] == []
    assert summary["changes"]["added"] == added and summary["changes"]["changed"] == ["labels.csv"]
    assert summary["message"].startswith("2 raw file change(s) since the last snapshot, but DVC has them")


def test_a_failing_stage_is_not_retried_and_its_changes_are_reported_again(runs, flows):
    """A stage's own error (here: labels.csv loses its MOS column) fails at once, and the snapshot
    stays put, so the next run still compares with the last good data."""
    project = runs["project"]
    labels = project / RAW / "labels.csv"
    good = labels.read_text()
    labels.write_text(good.replace("mos,", "score,", 1))
    state = flows.retrain(**{**runs["kw"], "retries": 3}, return_state=True)
    assert state.is_failed()
    assert _run_counts(state.state_details.flow_run_id)["dvc-repro"] == 1  # not retried
    with pytest.raises(rt.DvcError, match="failed to reproduce 'ingest'"):
        state.result()
    snap = rt.load_snapshot(project / rt.SNAPSHOT, RAW)
    assert snap["labels.csv"]["md5"] == hashlib.md5(good.encode()).hexdigest()  # the last good run's

    assert not (project / "data/manifest.parquet").exists()  # DVC removed the failed stage's output

    labels.write_text(good)  # same bytes as the snapshot, new mtime: no data change
    restored = flows.retrain(**runs["kw"])
    assert not restored["changes"]["changed"] and not restored["changes"]["added"]
    # the deleted output is stale; DVC checks it out of its run cache instead of running the stage
    assert restored["status"] == "restored" and restored["stale"] == ["ingest"]
    assert restored["repro"]["ran"] == [] and restored["repro"]["cached"] == ["ingest"]
    assert (project / "data/manifest.parquet").is_file()


def test_new_data_failing_the_gate_trains_nothing_and_says_why(runs, flows):
    """Fault injection (#20 d): a retraining run on new data the GX gate refuses (a truncated photo;
    `validate.max_fail_share` 0) stops at `validate`: nothing downstream runs (no scorer, no MLflow
    registry), the flow fails without retrying, and its error names the file and the reason."""
    project = runs["project"]
    photo = project / RAW / "images" / "img003.png"
    good = photo.read_bytes()
    photo.write_bytes(good[: len(good) // 3])
    try:
        state = flows.retrain(**{**runs["kw"], "targets": ["register"], "retries": 3}, return_state=True)
        assert state.is_failed()
        assert _run_counts(state.state_details.flow_run_id)["dvc-repro"] == 1  # not retried
        with pytest.raises(rt.DvcError, match="failed to reproduce 'validate'") as err:
            state.result()
        assert "img003.png" in str(err.value) and "truncated" in str(err.value)
        assert not (project / "models").exists() and not (project / "mlflow.db").exists()
    finally:
        photo.write_bytes(good)


def test_new_data_in_a_dvc_import_is_pulled_by_dvc_update(flows, tmp_path):
    """`ingest.root` imported with `dvc import-url`: new files upstream arrive through `dvc update`."""
    project = make_project(tmp_path / "project", n_items=12)
    source = tmp_path / "upstream"
    shutil.move(project / RAW, source)
    subprocess.run(
        [sys.executable, "-m", "dvc", "import-url", str(source), RAW],
        cwd=project,
        check=True,
        capture_output=True,
    )
    kw = {"project_dir": str(project), "targets": ["ingest"], "retries": 0}
    first = flows.retrain(**kw)
    assert first["imports"] == [{**first["imports"][0], "file": "raw.dvc", "changed": False}]
    assert first["repro"]["ran"] == ["ingest"]

    add_items(source, 12, 14)
    second = flows.retrain(**kw)
    (imp,) = second["imports"]
    assert imp["file"] == "raw.dvc" and imp["changed"] and imp["before"] != imp["after"]
    assert second["changes"]["added"] == ["images/img012.png", "images/img013.png"]
    assert second["changes"]["changed"] == ["labels.csv"]
    assert second["repro"]["ran"] == ["ingest"] and "new data from 1 DVC import" in second["message"]
    assert (project / RAW / "images/img013.png").is_file()


# ---------------------------------------------------------------------------------------------------------
# The whole pipeline: training and the registry gate


@pytest.mark.slow
def test_whole_pipeline_retrains_registers_and_reports_the_champion(flows, tmp_path):
    from mlflow import MlflowClient

    project = make_project(tmp_path / "project", n_items=24)
    kw = {"project_dir": str(project), "retries": 1, "retry_delay_s": 1.0}
    first = flows.retrain(**kw)
    assert first["status"] == "retrained" and first["register_ran"]
    assert first["repro"]["ran"][0] == "build_demo" and first["repro"]["ran"][-1] == "register"
    assert set(first["repro"]["ran"]) == {
        "build_demo", "ingest", "validate", "labels", "annotate", "pmod", "tune", "train", "evaluate", "register"
    }  # fmt: skip
    reg = first["register"]
    assert reg["champion_before"] is None and reg["challenger_version"] == "1"
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")

    def champion() -> str | None:
        try:
            return str(client.get_model_version_by_alias("qualitune", "champion").version)
        except Exception:
            return None

    assert first["champion_version"] == champion()
    assert first["champion_moved"] == (champion() == "1")

    new = add_items(project / RAW, 24, 30)
    second = flows.retrain(**kw)
    assert second["changes"]["added"] == new
    assert second["changes"]["changed"] == ["labels.csv"]
    ran = second["repro"]["ran"]
    assert "build_demo" not in ran and ran[0] == "ingest" and "register" in ran and "train" in ran
    reg = second["register"]
    assert reg["challenger_version"] == "2"
    assert reg["champion_before"] == first["champion_version"]
    assert second["champion_version"] == champion()  # the summary says what the registry says
    assert second["champion_moved"] == (champion() == "2") == reg["promoted"]
    word = "moved" if second["champion_moved"] else "unchanged"
    assert f"Champion {word}" in second["champion"]
    md = _artifact(second)
    assert f"| challenger | 2 | {reg['challenger_final']:.4f} |" in md

    third = flows.retrain(**kw)
    assert third["status"] == "no change" and third["repro"] is None
    assert third["champion_version"] == second["champion_version"] and not third["champion_moved"]


# ---------------------------------------------------------------------------------------------------------
# `qualitune schedule`: the deployment on the (test harness's) Prefect API


def test_schedule_registers_a_cron_deployment_in_a_process_pool(prefect_harness, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    from qualitune import cli

    project = make_project(tmp_path / "project", n_items=3)
    argv = ["schedule", "--cron", "0 3 * * 1", "--pool", "qt-test", "--project", str(project)]
    assert cli.main([*argv, "--name", "weekly"]) == 2  # the pool does not exist yet
    assert "prefect work-pool create qt-test --type process" in capsys.readouterr().err
    assert cli.main([*argv, "--name", "weekly", "--cron", "61 3 * * *"]) == 2
    assert "invalid --cron" in capsys.readouterr().err

    assert cli.main([*argv, "--name", "weekly", "--create-pool", "--target", "train", "--retries", "3"]) == 0
    out = capsys.readouterr().out
    assert "deployment qualitune-retrain/weekly" in out and "prefect worker start --pool qt-test" in out
    with get_client(sync_client=True) as client:
        pool = client.read_work_pool("qt-test")
        dep = client.read_deployment_by_name("qualitune-retrain/weekly")
    assert pool.type == "process"
    assert dep.work_pool_name == "qt-test" and dep.entrypoint == "flows/retrain.py:retrain"
    (sched,) = dep.schedules
    assert sched.schedule.cron == "0 3 * * 1" and sched.schedule.timezone == "UTC" and sched.active
    assert dep.parameters == {
        "project_dir": str(project.resolve()),
        "retries": 3,
        "retry_delay_s": 60.0,
        "targets": ["train"],
    }
    (step,) = dep.pull_steps  # the worker runs the flow from the project folder itself
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(project.resolve())


def test_schedule_with_an_unreachable_api_names_the_url_and_the_fix(tmp_path):
    """Regression: an unreachable Prefect API printed a 74-line httpx.ConnectError traceback."""
    import socket

    project = make_project(tmp_path / "project", n_items=3)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    res = subprocess.run(
        [sys.executable, "-m", "qualitune.cli", "schedule", "--cron", "0 3 * * 1", "--project", str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert (
        f"the Prefect API at {url} cannot be reached" in res.stderr and "prefect server start" in res.stderr
    )
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
