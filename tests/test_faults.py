"""Fault injection (#20): a full disk while a checkpoint or the scorer folder is written, and an
MLflow tracking server that fails in the middle of a training run.

The write is made to fail the way a full disk fails it (`OSError(ENOSPC)` from the writer, part of
the files already written), through the real functions. What must hold: the error reaches the
caller, and the previous checkpoint / scorer is still complete and loads. The tracking server's
failure is MLflow's own client raising, as it does when the server refuses a request.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from qualitune import scorer as scorer_mod
from qualitune import training
from vlm_factory import tiny_scorer_dir

ROOT = Path(__file__).resolve().parents[1]


class _OneProcess:
    """The parts of an `accelerate.Accelerator` that checkpointing uses, for a single process."""

    is_main_process = True
    process_index = 0
    num_processes = 1

    def wait_for_everyone(self) -> None:
        pass


def _disk_full(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _parts():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return model, opt, sched


def test_disk_full_during_a_checkpoint_keeps_the_previous_one_loadable(tmp_path, monkeypatch):
    model, opt, sched = _parts()
    acc = _OneProcess()
    training._save_checkpoint(tmp_path, 10, acc, model, opt, sched, "fp", keep=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # the next checkpoint would hold other weights
    real_save = torch.save

    def save(obj, path, *a, **k):  # the RNG state is written, then the optimizer's hits the full disk
        if str(path).endswith("optimizer.pt"):
            _disk_full()
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        training._save_checkpoint(tmp_path, 20, acc, model, opt, sched, "fp", keep=2)
    monkeypatch.undo()
    latest = training.latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "ckpt-0000010"
    assert (tmp_path / "ckpt-0000020.tmp").is_dir()  # the half-written one is never taken for a checkpoint
    fresh, fresh_opt, fresh_sched = _parts()
    with torch.no_grad():
        fresh.weight.zero_()
    step = training._load_checkpoint(latest, acc, fresh, fresh_opt, fresh_sched, "fp")
    assert step == 10
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_disk_full_while_writing_the_scorer_keeps_the_previous_scorer(tmp_path, monkeypatch):
    out = tiny_scorer_dir(tmp_path / "scorer", max_pixels=56 * 56)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    spec = scorer_mod.ScorerSpec.read(out)
    spec.max_pixels = 84 * 84
    monkeypatch.setattr(scorer_mod.ScorerSpec, "write", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        scorer_mod.save_scorer(torch.nn.Linear(2, 2), spec, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert json.loads((out / scorer_mod.SPEC_FILE).read_text())["max_pixels"] == 56 * 56
    loaded = scorer_mod.Scorer.load(out, device="cpu")
    assert loaded.spec.max_pixels == 56 * 56


@pytest.mark.slow  # two tiny training runs and a fresh MLflow database: ~30 s on 2 cores
def test_mlflow_failing_mid_run_keeps_the_outputs_fails_clearly_and_a_rerun_logs(
    tmp_path, monkeypatch, capsys
):
    """Fault injection (#20 a): the tracking server accepts the run and its params, then refuses
    every metric. Training goes on; the scorer, its metrics and the checkpoints stay on disk; the
    stage fails with a message naming them and the server; once the server is back, a rerun
    resumes from the checkpoints and logs a FINISHED run, and `register` then registers that run."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from qualitune.stages import train as train_stage
    from test_train_stage import _project

    project = _project(tmp_path / "project", epochs=1, checkpoint_every=2)
    monkeypatch.chdir(project)
    real = MlflowClient.log_batch

    def refused(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
        if metrics:
            raise MlflowException(
                "API request to http://tracking:5000/api/2.0/mlflow/runs/log-batch failed: Connection refused"
            )
        return real(self, run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "log_batch", refused)
        assert train_stage.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "training finished and its outputs are on disk" in err and "Connection refused" in err
    assert "resumes from the checkpoints kept in" in err
    assert (project / "models/scorer/qualitune_scorer.json").is_file()
    assert json.loads((project / "reports/train_metrics.json").read_text())["val"]["expected"]["n"] == 8
    assert any(p.is_dir() for p in (project / "models/checkpoints").glob("*/ckpt-*"))
    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    (failed,) = client.search_runs([client.get_experiment_by_name("qualitune").experiment_id])
    assert failed.info.status == "FAILED"

    assert train_stage.main(["--params", "params.yaml"]) == 0  # the server is back
    metrics = json.loads((project / "reports/train_metrics.json").read_text())
    assert metrics["train"]["resumed_from_micro_step"] > 0
    runs = client.search_runs(
        [client.get_experiment_by_name("qualitune").experiment_id], "status = 'FINISHED'"
    )
    assert len(runs) == 1 and "val.expected.srcc" in runs[0].data.metrics
    assert not any((project / "models/checkpoints").glob("*/ckpt-*"))

    from qualitune.scorer import ScorerSpec
    from qualitune.stages import register as register_stage
    from qualitune.store import download_scorer

    monkeypatch.setenv("QUALITUNE_MODEL_CACHE", str(tmp_path / "cache"))
    assert register_stage.main(["--params", "params.yaml"]) == 0  # and a later `register` completes
    report = json.loads((project / "reports/register.json").read_text())
    (version,) = client.search_model_versions("name='qualitune'")
    assert report["challenger_version"] == str(version.version)
    assert ScorerSpec.read(download_scorer(report["model_uri"], tracking_uri="sqlite:///mlflow.db"))


def _register(project: Path, scorer: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qualitune.cli",
            "register",
            "--params",
            "params.yaml",
            "--scorer",
            str(scorer),
        ],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow  # a handful of `qualitune register` subprocesses: ~3 min on 2 cores
def test_sigkill_at_random_points_of_register_leaves_the_champion_old_or_new(tmp_path):
    """Fault injection (#20 c): `qualitune register` killed with SIGKILL at seeded random times
    (from 0 to the length of a full run). After each kill the `champion` alias exists and names a
    version whose scorer downloads and loads: the old one, or a new one logged in full. A last,
    undisturbed run then registers and promotes as usual."""
    import mlflow

    from qualitune.manifest import write_manifest
    from qualitune.scorer import ScorerSpec
    from qualitune.store import download_scorer
    from test_registry import DVC_LOCK, MANIFEST_COLUMNS, _git, _media

    train_rows, val_rows = _media(tmp_path / "media")
    # the same untrained scorer six times: equal finals, and a tie promotes, so every completed run
    # moves the alias (a new version each time)
    scorers = [tiny_scorer_dir(tmp_path / f"scorer{i}") for i in range(6)]
    project = tmp_path / "project"
    project.mkdir()
    manifest = pd.DataFrame(train_rows + val_rows).assign(mos=lambda d: d["mos_norm"], **MANIFEST_COLUMNS)
    write_manifest(manifest, project / "data" / "pmod.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(out=str(scorers[0]), data="data/pmod.parquet")
    params["mlflow"] = {"tracking_uri": "sqlite:///mlflow.db", "experiment": "qualitune", "enabled": True}
    params["register"] = {"min_final": -1.0, "margin": 0.0, "mode": "expected", "batch_size": 4}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "dvc.lock").write_text(DVC_LOCK)
    _git(project, "init", "-q")
    _git(project, "add", "params.yaml", "dvc.lock")
    _git(project, "commit", "-q", "-m", "init")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "QUALITUNE_MODEL_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)

    t0 = time.monotonic()
    first = _register(project, scorers[0], env)
    out, _ = first.communicate(timeout=600)
    full = time.monotonic() - t0
    assert first.returncode == 0, out
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    def champion() -> str:
        return str(client.get_registered_model("qualitune").aliases["champion"])

    history = [champion()]
    rng = np.random.default_rng(0)
    for k, scorer in enumerate(scorers[1:-1]):
        proc = _register(project, scorer, env)
        time.sleep(float(rng.uniform(0.2, 1.0)) * full)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        history.append(_champion_old_or_new(client, uri, history[-1], why=k))
    last = _register(project, scorers[-1], env)
    out, _ = last.communicate(timeout=600)
    assert last.returncode == 0, out
    assert int(champion()) > int(history[-1])
    ScorerSpec.read(download_scorer("models:/qualitune@champion", tracking_uri=uri))


@pytest.mark.slow  # a project copy and three DVC processes: ~25 s (a held lock is retried: test_retrain)
def test_two_dvc_repro_at_once_the_second_fails_clearly_and_nothing_is_corrupted(tmp_path):
    """Fault injection (#20 e): two `dvc repro ingest` started together on the real dvc.yaml. DVC's
    repository lock lets one run; the other exits non-zero naming the lock (the retraining flow
    retries exactly this, see test_retrain). Afterwards the pipeline is up to date and the manifest
    has every label row."""
    from project_factory import make_project
    from qualitune.manifest import read_manifest

    project = make_project(tmp_path / "project", n_items=12)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    cmd = [sys.executable, "-m", "dvc", "repro", "ingest"]
    procs = [
        subprocess.Popen(
            cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0, outs
    if codes[1] != 0:  # the usual case: the second found the lock held
        loser = outs[[p.returncode for p in procs].index(codes[1])]
        assert "lock" in loser.lower(), loser
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "ingest"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0 and "up to date" in status.stdout.lower(), status.stdout + status.stderr
    assert len(read_manifest(project / "data/manifest.parquet")) == 12


@pytest.mark.slow  # a baseline retraining run, three killed ones and a last one: ~3 min on 2 cores
def test_sigkill_at_random_points_of_the_retraining_flow_leaves_the_champion_and_loses_no_data(
    flows, tmp_path, monkeypatch
):
    """Fault injection (#20 c): the retraining flow (`python flows/retrain.py`, on the session's
    Prefect server) on new data, its whole process group (flow, `dvc repro`, the stage running)
    killed with SIGKILL at seeded random times, as when the machine or container dies. After each
    kill the `champion` alias names the old version or a new one whose scorer downloads and loads,
    and the raw-data snapshot still holds the last successful run's files (the new data is not
    marked as seen). A last, undisturbed run then lists the new files, reruns the pipeline, and its
    summary names the registry's champion."""
    import prefect.settings
    from mlflow import MlflowClient

    from project_factory import RAW, add_items, make_project
    from qualitune import retrain as rt
    from qualitune.scorer import ScorerSpec
    from qualitune.store import download_scorer

    project = make_project(tmp_path / "project", n_items=24)
    kw = {"project_dir": str(project), "retries": 0, "retry_delay_s": 0.0}
    t0 = time.monotonic()
    first = flows.retrain(**kw)
    full = time.monotonic() - t0
    assert first["status"] == "retrained" and first["register_ran"], first["message"]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def champion() -> str:
        return str(client.get_model_version_by_alias("qualitune", "champion").version)

    history = [champion()]
    monkeypatch.setenv("QUALITUNE_MODEL_CACHE", str(tmp_path / "cache"))
    seen = rt.load_snapshot(project / rt.SNAPSHOT, RAW)
    new = add_items(project / RAW, 24, 30)
    assert seen and not set(new) & set(seen)
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value(),
        "QUALITUNE_MODEL_CACHE": str(tmp_path / "cache"),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "flows/retrain.py", "--project", ".", "--retries", "0"]
    rng = np.random.default_rng(0)
    kills: list[list[str]] = []  # where each kill landed, for the failure message and the log
    for k in range(3):
        proc = subprocess.Popen(
            cmd,
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        time.sleep(float(rng.uniform(0.1, 1.0)) * full)
        os.killpg(proc.pid, signal.SIGKILL)  # the flow, dvc and the stage it runs, at once
        out, _ = proc.communicate(timeout=60)
        _wait_gone(proc.pid)  # DVC counts a live (or unreaped) PID in its rwlock as a holder
        kills.append(sorted(rt.dvc_status(project)))  # the stages the kill left stale
        history.append(_champion_old_or_new(client, uri, history[-1], why=(k, kills[-1], out[-2000:])))
        snap = rt.load_snapshot(project / rt.SNAPSHOT, RAW)
        assert snap == seen or set(new) <= set(snap), (k, out[-2000:])  # old, or written after a full run
        seen = snap

    last = flows.retrain(**kw)
    assert last["status"] in ("retrained", "no change"), last["message"]
    if not set(new) <= set(seen):  # no killed run got to the end: the last one sees the new files
        assert sorted(last["changes"]["added"]) == sorted(new) and last["status"] == "retrained"
    assert last["champion_version"] == champion()
    assert int(champion()) >= int(history[-1])
    ScorerSpec.read(download_scorer("models:/qualitune@champion", tracking_uri=uri))
    assert rt.dvc_status(project) == {}  # and the pipeline is whole: every stage up to date
    print(f"stale stages after each kill: {kills}; champion {history} -> v{champion()}")


def _champion_old_or_new(client, uri: str, before: str, why: object) -> str:
    """After a kill: `champion` exists and names `before` or a newer version, and that version's
    scorer downloads complete (never a half-logged model); returns it."""
    from qualitune.scorer import ScorerSpec
    from qualitune.store import download_scorer

    now = str(client.get_model_version_by_alias("qualitune", "champion").version)
    versions = {str(v.version) for v in client.search_model_versions("name='qualitune'")}
    assert now == before or (now in versions and int(now) > int(before)), (now, before, why)
    ScorerSpec.read(download_scorer("models:/qualitune@champion", tracking_uri=uri))
    return now


def _wait_gone(pgid: int, timeout: float = 60.0) -> None:
    """Wait until no process of the killed group is left (children die and are reaped just after)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of group {pgid} still alive {timeout:g} s after SIGKILL")
