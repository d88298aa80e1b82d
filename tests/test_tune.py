"""The Optuna search (`qualitune tune`) on a tiny project: real training, a real sqlite study.

Two worker processes on one storage finish exactly `n_trials` trials together; a study resumes (a
killed worker's stale trial is failed and replaced); every trial is an MLflow child run of "tune".
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from qualitune.config import apply_tuned, load_params
from qualitune.manifest import write_manifest
from qualitune.pipeline.tune import run_search
from qualitune.search import (
    SurplusTrial,
    TrialSeededSampler,
    TuneSettings,
    effective_space,
    load_study,
    make_storage,
    objective,
    parse_range_key,
    suggest,
)
from vlm_factory import training_frame

ROOT = Path(__file__).resolve().parents[1]
N = 4
SPACE = {
    "lr": [1.0e-3, 3.0e-2],
    "epochs": [1, 2],
    "lora_r": [2, 4],
    "label_range": [[1, 5], [10, 50], [0, 100]],
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _project(tmp: Path, *, mlflow: bool = False, **tune) -> Path:
    """A project folder whose params train a tiny LoRA scorer on 8 train / 4 val images in seconds."""
    tmp.mkdir(parents=True, exist_ok=True)
    df = training_frame(tmp / "media", n=12, splits=("train", "train", "val"))
    write_manifest(df, tmp / "data" / "pmod.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["model"].update(min_pixels=56 * 56, max_pixels=84 * 84, n_frames=1)
    params["train"].update(
        data="data/pmod.parquet",
        tuning="lora",
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        batch_size=4,
        val_batch_size=4,
        checkpoint_every=0,
        tuned_params="tuned_params.yaml",  # the trials must ignore an earlier best
    )
    params["mlflow"] = {"tracking_uri": "sqlite:///mlflow.db", "experiment": "qualitune", "enabled": mlflow}
    params["tune"] = {
        "storage": "sqlite:///optuna.db",
        "n_trials": N,
        "space": SPACE,
        "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
        # busy CPUs stall the heartbeat thread for seconds (the GIL): a short grace would let one worker
        # fail the other's live trial; the resume test shortens it to fail its ghost trial quickly
        "heartbeat_s": 1,
        "grace_s": 60,
        **tune,
    }
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def _study(project: Path) -> optuna.Study:
    settings = TuneSettings.from_params({"tune": {"storage": f"sqlite:///{project / 'optuna.db'}"}})
    return optuna.load_study(study_name="qualitune", storage=make_storage(settings))


def _run_workers(project: Path, n: int, *, timeout: int) -> list[str]:
    """Start `n` `qualitune tune` processes on the project at once; their outputs once all exited 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            _tune_cmd("--params", "params.yaml"),
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    return outs


def _tune_cmd(*args: str) -> list[str]:
    from qualitune import cli

    if "tune" in cli.COMMANDS:
        return [sys.executable, "-m", "qualitune.cli", "tune", *args]
    return [sys.executable, "-m", "qualitune.commands.tune", *args]  # until cli.COMMANDS lists "tune"


# ---------------------------------------------------------------------------------------------------------
# Settings and the search space


def test_suggest_respects_the_space():
    # YAML 1.1 reads 1e-3 (no dot) as a string
    settings = TuneSettings.from_params({"tune": {"space": {**SPACE, "lr": ["1e-3", "3e-2"]}}})
    assert settings.space["lr"] == [1e-3, 3e-2]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_r, seen_ranges, seen_epochs = set(), set(), set()
    for _ in range(40):
        trial = study.ask()
        overlay = suggest(trial, settings.space)
        assert set(overlay) == {"train"}
        t = overlay["train"]
        assert 1e-3 <= t["lr"] <= 3e-2
        assert isinstance(t["epochs"], int) and 1 <= t["epochs"] <= 2
        assert t["lora"]["r"] in (2, 4) and t["lora"]["alpha"] == 2 * t["lora"]["r"]
        assert t["label_range"] in SPACE["label_range"]
        assert trial.distributions["lr"].log
        assert parse_range_key(trial.params["label_range"]) == t["label_range"]  # stored as "10-50"
        seen_r.add(t["lora"]["r"])
        seen_ranges.add(tuple(t["label_range"]))
        seen_epochs.add(t["epochs"])
        study.tell(trial, 0.0)
    assert seen_r == {2, 4} and len(seen_ranges) == 3 and seen_epochs == {1, 2}
    # the LoRA rank is searched only where the recipe trains LoRA adapters
    assert "lora_r" not in effective_space(settings.space, {"train": {"tuning": "full"}})
    assert effective_space(settings.space, {"train": {"tuning": "warmup"}}) == settings.space
    # a key left out is not searched
    assert suggest(study.ask(), TuneSettings.from_params({"tune": {"space": {"epochs": [3, 3]}}}).space) == {
        "train": {"epochs": 3}
    }


@pytest.mark.parametrize(
    "tune",
    [
        {"space": {"lr": [0, 1e-2]}},
        {"space": {"epochs": [2, 1]}},
        {"space": {"lora_r": []}},
        {"space": {"label_range": [[5, 1]]}},
        {"space": {"label_range": [[-5, 5]]}},
        {"timeout_s": "1h"},
        {"space": {"dropout": [0, 1]}},
        {"n_trials": -1},
        {"direction": "up"},
        {"trails": 3},
        {"heartbeat_s": 10, "grace_s": 5},
    ],
)
def test_bad_settings_are_errors(tune):
    with pytest.raises(ValueError, match="tune"):
        TuneSettings.from_params({"tune": tune})


def test_workers_with_one_seed_do_not_draw_the_same_trials():
    """Two processes seeded alike would train identical configurations side by side; per-trial seeds
    keep them apart and keep trial n reproducible."""
    storage = optuna.storages.InMemoryStorage()
    space = TuneSettings().space
    a = optuna.create_study(storage=storage, study_name="s", sampler=TrialSeededSampler(0))
    b = optuna.load_study(storage=storage, study_name="s", sampler=TrialSeededSampler(0))
    ta, tb = a.ask(), b.ask()
    assert (ta.number, tb.number) == (0, 1)
    first = suggest(ta, space)
    assert first != suggest(tb, space)
    again = optuna.create_study(sampler=TrialSeededSampler(0)).ask()
    assert suggest(again, space) == first


def test_zero_trials_writes_an_empty_overlay_and_nothing_else(tmp_path, monkeypatch, capsys):
    """`n_trials: 0` (the default) keeps the DVC stage cheap: `{}` and no study, no run, no trials."""
    from qualitune.commands import tune as tune_command
    from qualitune.stages import tune as tune_stage

    project = _project(tmp_path / "p", mlflow=True)  # n_trials N in params, overridden to 0 below
    before = {p.relative_to(project) for p in project.rglob("*")}
    monkeypatch.chdir(project)
    assert tune_command.main(["--params", "params.yaml", "--n-trials", "0"]) == 0
    assert yaml.safe_load((project / "tuned_params.yaml").read_text()) == {}
    after = {p.relative_to(project) for p in project.rglob("*")}
    assert after - before == {Path("tuned_params.yaml")}  # no optuna.db, no mlflow.db, no trials
    params = load_params("params.yaml")
    assert apply_tuned(params, "tuned_params.yaml") == params

    params["tune"]["n_trials"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "tuned_params.yaml").unlink()
    assert tune_stage.main(["--params", "params.yaml"]) == 0
    assert yaml.safe_load((project / "tuned_params.yaml").read_text()) == {}
    assert "n_trials is 0" in capsys.readouterr().out
    params["tune"]["space"] = {"lr": [1, "x"]}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert tune_stage.main(["--params", "params.yaml"]) == 2  # a user error: message, exit 2
    assert "tune.space.lr" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# The worker loop with a stand-in for training (fast): NaN, lost and surplus trials


def _fake_train(finals: list):
    """A stand-in for train_scorer: reports and returns the next value of `finals` for each trial;
    "lose" makes another worker fail the running trial first (as a stale heartbeat would)."""
    calls: list[str] = []

    def train_scorer(
        params, *, on_epoch_end=None, out_dir=None, metrics_path=None, run_name=None, nested=False
    ):
        value = finals[len(calls)]
        calls.append(run_name)
        assert params["train"]["tuned_params"] is None and nested
        if value == "lose":
            storage = make_storage(TuneSettings.from_params(params))
            other = optuna.load_study(study_name="qualitune", storage=storage)
            (running,) = other.get_trials(states=(TrialState.RUNNING,))
            storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
            value = 0.9
        Path(out_dir).mkdir(parents=True)
        on_epoch_end(0, 0, {"final": value})
        return {"val": {"expected": {"final": value, "n": 4, "n_missing": 0, "parse_failures": 0}}}

    return train_scorer, calls


def test_nan_and_lost_trials_fail_and_are_replaced(tmp_path, monkeypatch):
    import qualitune.pipeline.train as train_pipeline

    project = tmp_path / "p"
    project.mkdir()
    monkeypatch.chdir(project)
    fake, calls = _fake_train([float("nan"), "lose", 0.25, 0.5])
    monkeypatch.setattr(train_pipeline, "train_scorer", fake)
    params = {
        "train": {"tuning": "lora", "lr": 0.1, "tuned_params": "tuned_params.yaml"},
        "mlflow": {"enabled": False},
        "tune": {"n_trials": 2, "space": SPACE, "pruner": None},
    }
    summary = run_search(params)
    trials = _study(project).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert math.isnan(trials[0].intermediate_values[0]) and trials[0].value is None  # NaN is never a number
    assert "NaN" in trials[0].user_attrs["fail_reason"]
    assert calls == [f"trial-{i}" for i in range(4)]
    assert summary["complete"] == 2 and summary["failed"] == 2 and summary["best"]["number"] == 3
    assert sorted(p.name for p in (project / "models/trials").iterdir()) == ["trial-3"]
    assert apply_tuned(params, "tuned_params.yaml")["train"]["lr"] == pytest.approx(trials[3].params["lr"])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside optimize
def test_a_trial_beyond_n_trials_gives_itself_up(tmp_path, monkeypatch):
    """Two workers asking at the same moment can create trial N+1; it must not train or count."""
    monkeypatch.chdir(tmp_path)
    settings = TuneSettings.from_params({"tune": {"n_trials": 2, "space": SPACE}})
    study = load_study(settings)
    study.ask(), study.ask()  # two trials running in other workers
    obj = objective({"train": {}, "mlflow": {"enabled": False}}, settings)
    study.optimize(obj, n_trials=1, catch=(SurplusTrial,))
    (surplus,) = study.get_trials(states=(TrialState.FAIL,))
    assert surplus.number == 2 and surplus.user_attrs == {"surplus": True} and not surplus.params


# ---------------------------------------------------------------------------------------------------------
# Real searches


def _runs(project: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("qualitune").experiment_id])


def _children(runs: list, parent) -> list:
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two `qualitune tune` processes started together on one fresh sqlite study (n_trials N) and one
    fresh MLflow store; returns the project, its trials and MLflow runs right after both exit."""
    project = _project(tmp_path_factory.mktemp("tune"), mlflow=True)
    t0 = time.perf_counter()
    _run_workers(project, 2, timeout=300)
    trials = _study(project).get_trials()
    print(f"two workers: {time.perf_counter() - t0:.1f} s, states {[t.state.name for t in trials]}")
    return project, trials, _runs(project)


def test_two_workers_finish_n_trials_together(two_workers):
    project, trials, _ = two_workers
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == N
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in trials:  # anything else failed honestly: a NaN value or a surplus trial given up
        assert t.state in FINISHED or t.user_attrs.get("surplus") or "fail_reason" in t.user_attrs
    for t in finished:
        assert set(t.params) == {"lr", "epochs", "lora_r", "label_range"}
        assert t.user_attrs["overlay"]["train"]["lora"]["r"] == t.params["lora_r"]
        assert 1 <= len(t.intermediate_values) <= t.params["epochs"]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete, "no trial completed"
    best = max(complete, key=lambda t: t.value)

    params = load_params(project / "params.yaml")
    tuned = apply_tuned(params, project / "tuned_params.yaml")
    assert tuned["train"]["lr"] == pytest.approx(best.params["lr"])
    assert tuned["train"]["epochs"] == best.params["epochs"]
    r = best.params["lora_r"]
    assert tuned["train"]["lora"] == {**params["train"]["lora"], "r": r, "alpha": 2 * r}
    assert tuned["train"]["label_range"] == parse_range_key(best.params["label_range"])
    assert f"trial {best.number}," in (project / "tuned_params.yaml").read_text()
    # only the best trial's scorer is kept
    assert sorted(p.name for p in (project / "models/trials").iterdir()) == [f"trial-{best.number}"]
    assert (project / f"models/trials/trial-{best.number}/qualitune_scorer.json").is_file()


def test_every_trial_is_a_child_run_of_its_workers_tune_run(two_workers):
    """One parent run "tune" per worker (workers cannot share an open run); each trial one child."""
    _, trials, runs = two_workers
    parents = [r for r in runs if r.info.run_name == "tune"]
    assert len(parents) == 2 and len({p.data.tags["worker"] for p in parents}) == 2
    trained = [t for t in trials if "worker" in t.user_attrs]  # all but surplus trials
    assert len(runs) == len(parents) + len(trained)
    for parent in parents:
        mine = sorted(
            f"trial-{t.number}" for t in trained if t.user_attrs["worker"] == parent.data.tags["worker"]
        )
        assert sorted(r.info.run_name for r in _children(runs, parent)) == mine
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["optuna_study"] == "qualitune"
        assert parent.data.params["tune.n_trials"] == str(N)
    assert sum(len(_children(runs, p)) for p in parents) == len(trained) >= N
    child = next(r for r in runs if r.info.run_name != "tune")
    assert "val.expected.final" in child.data.metrics and "epoch_val.final" in child.data.metrics


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # study.ask() outside optimize
def test_a_study_resumes_and_a_killed_workers_trial_is_replaced(two_workers, monkeypatch):
    project, _, _ = two_workers
    monkeypatch.chdir(project)
    params = load_params("params.yaml")
    params["tune"]["grace_s"] = 2
    settings = TuneSettings.from_params(params)
    # a worker killed mid-trial: its trial stays RUNNING, its heartbeat goes stale
    study = load_study(settings)
    ghost = study.ask()
    study._storage.record_heartbeat(ghost._trial_id)
    time.sleep(settings.grace_s + 1)

    params["tune"]["n_trials"] = N + 1
    summary = run_search(params)
    trials = _study(project).get_trials()
    assert len([t for t in trials if t.state in FINISHED]) == N + 1
    assert trials[ghost.number].state == TrialState.FAIL
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert summary["complete"] + summary["pruned"] == N + 1 and summary["running"] == 0
    (new,) = [t for t in trials if t.number > ghost.number and t.state in FINISHED]
    runs = _runs(project)
    worker = new.user_attrs["worker"]
    (parent,) = [r for r in runs if r.data.tags.get("worker") == worker]
    mine = [f"trial-{t.number}" for t in trials if t.user_attrs.get("worker") == worker]  # + any NaN one
    assert sorted(r.info.run_name for r in _children(runs, parent)) == sorted(mine)
    # run again with the same target: nothing to do
    assert run_search(params)["complete"] == summary["complete"]
    assert len(_study(project).get_trials()) == len(trials)
