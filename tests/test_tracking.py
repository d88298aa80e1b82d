"""qualitune.tracking against a real MLflow (sqlite backend in a temp dir; no mocks).

One sqlite database is shared by the module: MLflow's first-time schema migration costs ~2 s per new db.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qualitune import tracking
from qualitune.tracking import (
    TrackingSettings,
    flatten_params,
    log_artifacts,
    log_metrics,
    log_params,
    start_run,
    tracking_settings,
)


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _global_uri_state() -> tuple[str | None, str | None]:
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def settings(store: Path, request) -> TrackingSettings:
    return tracking_settings(
        {
            "mlflow": {
                "tracking_uri": f"sqlite:///{store}/mlflow.db",
                "experiment": f"exp-{request.node.name}",
                "artifact_location": str(store / "artifacts" / request.node.name),
            }
        }
    )


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch):
    """Work in a temp dir outside any git repo, and check no MLflow URI state leaks out of the test."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    before = _global_uri_state() if "mlflow" in sys.modules else (None, None)
    yield work
    if "mlflow" in sys.modules:
        import mlflow

        assert mlflow.active_run() is None
        assert _global_uri_state() == before


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    cmd += ["-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_run_logs_params_metrics_artifacts_and_provenance(settings, tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "dvc.lock")
    _git(repo, "commit", "-q", "-m", "init")
    monkeypatch.chdir(repo)
    outside = tmp_path / "outputs"
    (outside / "reports").mkdir(parents=True)
    (outside / "model.txt").write_text("weights")
    (outside / "reports" / "eval.json").write_text("{}")

    params = {
        "train": {"lr": 1e-4, "epochs": 2, "layers": [1, 2], "opt": {"name": "adamw"}},
        "many": {f"k{i}": i for i in range(150)},  # > 100 params: several log_batch calls
        "long": "x" * 7000,
    }
    with start_run(settings, "train", params=params, tags={"stage": "train"}) as run:
        assert run is not None
        log_metrics({"loss": 1.0}, step=0)
        log_metrics({"loss": 0.5, "val": {"srcc": 0.8}}, step=1)
        log_params({"extra": {"note": "late"}})
        log_artifacts(outside / "model.txt")
        log_artifacts(outside / "reports", artifact_path="reports")

    client = _client(settings.tracking_uri)
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "train"
    p = got.data.params
    assert p["train.lr"] == "0.0001"
    assert p["train.layers"] == "[1, 2]"
    assert p["train.opt.name"] == "adamw"
    assert p["many.k149"] == "149"
    assert p["extra.note"] == "late"
    assert len(p["long"]) == tracking.MAX_PARAM_VAL_LENGTH
    assert p["long"].endswith("...[truncated, 7000 chars]")

    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5)]
    assert got.data.metrics["val.srcc"] == pytest.approx(0.8)

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"model.txt", "reports"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "reports")] == ["reports/eval.json"]

    tags = got.data.tags
    assert tags["stage"] == "train"
    assert tags["git_commit"] == _git(repo, "rev-parse", "HEAD")
    assert tags["git_dirty"] == "false"
    assert tags["dvc_lock_md5"] == hashlib.md5((repo / "dvc.lock").read_bytes()).hexdigest()

    (repo / "dvc.lock").write_text("changed\n")
    with start_run(settings, "dirty") as run2:
        pass
    assert _client(settings.tracking_uri).get_run(run2.info.run_id).data.tags["git_dirty"] == "true"


def test_outside_git_no_commit_tag(settings):
    with start_run(settings, "nogit") as run:
        pass
    tags = _client(settings.tracking_uri).get_run(run.info.run_id).data.tags
    assert "git_commit" not in tags and "git_dirty" not in tags and "dvc_lock_md5" not in tags


def test_exception_marks_run_failed_and_reraises(settings):
    with pytest.raises(RuntimeError, match="boom"), start_run(settings, "crash") as run:
        log_metrics({"loss": 2.0}, step=0)
        raise RuntimeError("boom")
    got = _client(settings.tracking_uri).get_run(run.info.run_id)
    assert got.info.status == "FAILED"
    assert got.data.metrics["loss"] == 2.0


def test_nested_run_and_nan_warning(settings, caplog):
    with start_run(settings, "tune") as parent:
        with caplog.at_level(logging.WARNING, logger="qualitune.tracking"):
            with start_run(settings, "trial-0", params={"lr": 0.1}, nested=True) as child:
                log_metrics({"score": float("nan"), "gap": float("inf")})
        log_metrics({"best": 1.0})
    assert "'score' is nan" in caplog.text and "'gap' is inf" in caplog.text
    client = _client(settings.tracking_uri)
    got = client.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert math.isnan(got.data.metrics["score"])
    assert got.data.metrics["gap"] > 1e300
    assert "best" in client.get_run(parent.info.run_id).data.metrics
    assert "best" not in got.data.metrics


def test_previous_tracking_uri_restored(settings, tmp_path):
    import mlflow

    other = f"sqlite:///{tmp_path}/other.db"
    with pytest.MonkeyPatch.context() as mp:  # undone before the leak check in `isolated`
        mp.setenv("MLFLOW_TRACKING_URI", other)
        with start_run(settings, "restore"):
            assert mlflow.get_tracking_uri() == settings.tracking_uri
        assert os.environ["MLFLOW_TRACKING_URI"] == other
        assert mlflow.get_tracking_uri() == other
    assert not (tmp_path / "other.db").exists()


def test_disabled_logs_nothing(tmp_path, isolated):
    db = tmp_path / "off" / "mlflow.db"
    s = tracking_settings({"mlflow": {"enabled": False, "tracking_uri": f"sqlite:///{db}"}})
    with start_run(s, "off", params={"a": 1}) as run:
        assert run is None
        log_metrics({"loss": 1.0}, step=0)
        log_params({"b": 2})
        log_artifacts(tmp_path / "does-not-matter")
    assert not db.exists() and not db.parent.exists()
    assert list(isolated.iterdir()) == []


def test_helpers_outside_a_run_raise():
    with pytest.raises(RuntimeError, match="start_run"):
        log_metrics({"loss": 1.0})


def test_bad_metric_values_raise(settings):
    with start_run(settings, "bad") as run:
        with pytest.raises(TypeError, match="'acc'"):
            log_metrics({"acc": "0.9"})
        with pytest.raises(FileNotFoundError):
            log_artifacts("missing.txt")
    assert _client(settings.tracking_uri).get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    "uri", ["mlflow.db", "/abs/mlflow.db", "sqlite://mlflow.db", "sqlite:///", "ftp://host/x", "http://", ""]
)
def test_bad_uri_raises_naming_the_key(uri):
    with pytest.raises(ValueError, match=r"mlflow\.tracking_uri"):
        tracking_settings({"mlflow": {"tracking_uri": uri}})


def test_settings_defaults_and_validation(isolated):
    s = tracking_settings({"train": {}})
    assert s == TrackingSettings(f"sqlite:///{isolated}/mlflow.db", "qualitune", True, None)
    assert tracking_settings({"mlflow": None}) == s
    s2 = tracking_settings({"mlflow": {"tracking_uri": "http://localhost:5000", "experiment": "x"}})
    assert (s2.tracking_uri, s2.experiment) == ("http://localhost:5000", "x")
    with pytest.raises(ValueError, match="mlflow.enabled"):
        tracking_settings({"mlflow": {"enabled": "false"}})
    with pytest.raises(ValueError, match="tracking_url"):
        tracking_settings({"mlflow": {"tracking_url": "sqlite:///x.db"}})
    with pytest.raises(ValueError, match="mlflow.experiment"):
        tracking_settings({"mlflow": {"experiment": ""}})


def test_flatten_params():
    flat = flatten_params(
        {"a": {"b": {"c": 1}, "d": [1, "x"], "e": {}}, "f": None, "g": (0.5,), "h": Path("data/x")},
        prefix="cfg",
    )
    assert flat == {
        "cfg.a.b.c": "1",
        "cfg.a.d": '[1, "x"]',
        "cfg.a.e": "{}",
        "cfg.f": "None",
        "cfg.g": "[0.5]",
        "cfg.h": "data/x",
    }
    long = flatten_params({"v": "y" * 10_000})["v"]
    assert len(long) == tracking.MAX_PARAM_VAL_LENGTH
    assert long.startswith("yyy") and long.endswith("...[truncated, 10000 chars]")
    exact = "z" * tracking.MAX_PARAM_VAL_LENGTH
    assert flatten_params({"v": exact})["v"] == exact
    with pytest.raises(ValueError, match="a.b"):
        flatten_params({"a.b": 1, "a": {"b": 2}})


def test_limits_match_installed_mlflow():
    from mlflow.utils import validation

    assert tracking.MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert tracking.MAX_PARAMS_TAGS_PER_BATCH == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert tracking.MAX_METRICS_PER_BATCH == validation.MAX_METRICS_PER_BATCH


def test_telemetry_off(settings):
    with start_run(settings, "telemetry"):
        pass
    from mlflow.telemetry.client import get_telemetry_client

    assert os.environ.get("MLFLOW_DISABLE_TELEMETRY", "").lower() in ("true", "1")
    assert get_telemetry_client() is None
