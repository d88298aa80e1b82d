"""The train stage as users run it: a subprocess killed with SIGKILL mid-epoch resumes to the same
weights; the saved scorer loads and scores through `qualitune score`; MLflow has the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from project_factory import base_params
from qualitune.manifest import write_manifest
from vlm_factory import run_stages_in, training_frame

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp: Path, **train_overrides) -> Path:
    """A project folder with a params.yaml whose train stage reads a small PMOD manifest."""
    tmp.mkdir(parents=True, exist_ok=True)
    df = training_frame(tmp / "media", n=24, splits=("train", "train", "val"))
    write_manifest(df, tmp / "data" / "pmod.parquet")
    params = base_params()
    params["model"].update(min_pixels=56 * 56, max_pixels=84 * 84, n_frames=1)
    params["train"].update(
        {
            "data": "data/pmod.parquet",
            "epochs": 3,
            "batch_size": 2,
            "checkpoint_every": 2,
            "val_batch_size": 4,
            "tuning": "lora",
            "lr": 1e-2,
            **train_overrides,
        }
    )
    params["mlflow"].update(tracking_uri="sqlite:///mlflow.db")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def _stage(cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "qualitune.stages.train", "--params", "params.yaml"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _adapter(project: Path) -> dict[str, torch.Tensor]:
    return load_file(str(project / "models/scorer/adapter/adapter_model.safetensors"))


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path):
    # lora dropout > 0 so the RNG state matters: resuming must restore it, not just the weights
    overrides = {"lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}}
    straight = _project(tmp_path / "straight", **overrides)
    proc = _stage(straight)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out

    killed = _project(tmp_path / "killed", **overrides)
    proc = _stage(killed)
    ckpts = killed / "models" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith("ckpt-") and not p.name.endswith(".tmp") for p in ckpts.glob("*/ckpt-*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "models/scorer").exists()  # killed mid-run: nothing final was written

    proc = _stage(killed)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "resumed from" in out
    metrics = json.loads((killed / "reports/train_metrics.json").read_text())
    assert metrics["train"]["resumed_from_micro_step"] >= 2
    a, b = _adapter(straight), _adapter(killed)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert not any(ckpts.glob("*/ckpt-*"))  # a finished run removes its resume points


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A project whose train stage ran in-process (full fine-tuning, a few epochs)."""
    from qualitune.stages import train as train_stage

    project = _project(
        tmp_path_factory.mktemp("proj"),
        tuning="full",
        lr=2e-3,
        epochs=2,
        checkpoint_every=0,
        val_modes=["expected", "greedy"],
    )
    run_stages_in(project, train_stage)
    return project


def test_stage_writes_scorer_metrics_and_an_mlflow_run(trained):
    spec = json.loads((trained / "models/scorer/qualitune_scorer.json").read_text())
    assert spec["answer_format"] == {"kind": "integer", "lo": 10, "hi": 50}
    assert (trained / "models/scorer/weights.safetensors").is_file()
    m = json.loads((trained / "reports/train_metrics.json").read_text())
    for mode in ("expected", "greedy"):
        assert {"srcc", "plcc", "parse_failures", "n"} <= set(m["val"][mode])
    assert m["val"]["expected"]["n"] == 8
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{trained / 'mlflow.db'}")
    exp = client.get_experiment_by_name("qualitune")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.method"] == "iovqa"
    assert "val.expected.srcc" in run.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train.loss")) == m["train"]["optimizer_steps"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "scorer")}
    assert "scorer/qualitune_scorer.json" in arts


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qualitune.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_score_cli_json_lines_and_bad_files_reported(trained):
    good = sorted(str(p) for p in (trained / "media").glob("*.png"))[:3]
    (trained / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    res = _cli("score", "--model", "models/scorer", "--json", *good, "broken.jpg", "missing.png", cwd=trained)
    assert res.returncode == 1, res.stderr  # two files failed
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == [*good, "broken.jpg", "missing.png"]
    for r in rows[:3]:
        assert 10 <= r["score"] <= 50 and len(r["levels"]) == 5 and abs(sum(r["levels"]) - 1) < 1e-6
    assert rows[3]["score"] is None and rows[3]["error"]
    assert rows[4]["score"] is None and "not found" in rows[4]["error"].lower()
    assert "media errors 2" in res.stderr


def test_score_cli_dtype_option_loads_in_that_dtype(trained):
    good = sorted(str(p) for p in (trained / "media").glob("*.png"))[:2]
    fp32 = _cli("score", "--model", "models/scorer", "--json", *good, cwd=trained)
    bf16 = _cli("score", "--model", "models/scorer", "--json", "--dtype", "bfloat16", *good, cwd=trained)
    assert fp32.returncode == 0 and bf16.returncode == 0, bf16.stderr
    a = [json.loads(line)["score"] for line in fp32.stdout.splitlines()]
    b = [json.loads(line)["score"] for line in bf16.stdout.splitlines()]
    assert all(10 <= x <= 50 for x in b) and a != b  # really computed in bf16: the scores moved a little
    bad = _cli("score", "--model", "models/scorer", "--dtype", "int8", *good, cwd=trained)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_scores_do_not_depend_on_batch_size(trained):
    from qualitune.scorer import Scorer

    scorer = Scorer.load(trained / "models/scorer")
    paths = sorted(str(p) for p in (trained / "media").glob("*.png"))[:8]
    for mode in ("expected", "greedy"):
        alone = [scorer.score_paths([p], mode=mode).results[0] for p in paths]
        batched = scorer.score_paths(paths, mode=mode, batch_size=8).results
        for a, b in zip(alone, batched, strict=True):
            if mode == "greedy":
                assert a["answer"] == b["answer"] and a["score"] == b["score"]
            else:
                assert abs(a["score"] - b["score"]) < 1e-4


def test_unparseable_greedy_answers_are_counted_with_their_text(tmp_path):
    """An untrained scorer answers nonsense: every answer is reported, none replaced by a number."""
    from qualitune.scorer import Scorer, ScorerSpec, save_scorer
    from qualitune.vlm.model import TINY_NAME, load_model

    model, _ = load_model(TINY_NAME)
    save_scorer(
        model,
        ScorerSpec(
            base_model=TINY_NAME, answer_format={"kind": "integer", "lo": 10, "hi": 50}, max_pixels=84 * 84
        ),
        tmp_path / "raw",
    )
    df = training_frame(tmp_path / "m", n=4)
    run = Scorer.load(tmp_path / "raw").score_paths(df["path"].tolist(), mode="greedy")
    assert run.report.total == 4
    failed = {i for i, _ in run.report.failures}
    for i, r in enumerate(run.results):
        assert (r["score"] is None) == (i in failed)
        if r["score"] is None:
            assert r["error"] == "answer did not parse" and isinstance(r["answer"], str)
    assert run.report.n_failed == len(failed) > 0


def test_zero_shot_transfer_of_a_trained_vision_encoder(trained, tmp_path):
    """`model.init_vision_from` + `epochs: 0`: the saved scorer carries the source's encoder, its
    own base's decoder, and reloads with both."""
    from qualitune.scorer import load_scored_model
    from qualitune.stages import train as train_stage
    from qualitune.vlm.model import TINY_NAME, load_model

    project = _project(tmp_path / "zs", tuning="warmup", epochs=0, checkpoint_every=0)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"].update(seed=5, init_vision_from=str(trained / "models/scorer"))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_stages_in(project, train_stage)
    source, _, _ = load_scored_model(trained / "models/scorer")
    moved, _, spec = load_scored_model(project / "models/scorer")
    own, _ = load_model(TINY_NAME, seed=5)
    src = dict(source.named_parameters())
    own_p = dict(own.named_parameters())
    for name, p in moved.base_model.model.named_parameters():
        name = name.replace(".base_layer.", ".")
        if "lora_" in name:
            continue
        if name.startswith("model.visual.") and ".merger." not in name:
            assert torch.equal(p, src[name]), name
        elif name in own_p:
            assert torch.equal(p, own_p[name]), name
    assert spec.recipe["init_vision_from"].endswith("models/scorer")


def test_pmod_pretraining_is_a_first_phase_whose_weights_the_mos_recipe_continues(tmp_path, capsys):
    """train.pretrain: a VITAL phase on the PMOD (level words, KL), then the IOVQA recipe on the same
    LoRA weights; both phases' losses reach MLflow and the metrics, checkpoints of both are cleaned."""
    from mlflow import MlflowClient

    from qualitune.stages import train as train_stage

    project = _project(
        tmp_path / "p",
        tuning="lora",
        epochs=1,
        checkpoint_every=1,
        pretrain={
            "enabled": True,
            "method": "vital",
            "epochs": 1,
            "vital": {"target": "pmod", "compare_weight": 0.0, "describe_weight": 0.0},
        },
    )
    run_stages_in(project, train_stage)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("train:")]
    assert (
        "16 score examples, 8 steps" in line
        and "after 8 PMOD pre-training steps, " in line
        and " s pre-training); val expected SRCC" in line
    )
    m = json.loads((project / "reports/train_metrics.json").read_text())
    assert (
        m["pretrain"]["optimizer_steps"] == 8 and m["train"]["optimizer_steps"] == 8
    )  # 16 train items, batch 2
    assert m["pretrain"]["loss_last"] < m["pretrain"]["loss_first"]
    spec = json.loads((project / "models/scorer/qualitune_scorer.json").read_text())
    assert spec["recipe"]["pretrain"] is True and spec["answer_format"]["kind"] == "integer"
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("qualitune").experiment_id])
    pre = client.get_metric_history(run.info.run_id, "pretrain.train.loss")
    main = client.get_metric_history(run.info.run_id, "train.loss")
    assert [h.step for h in pre] == list(range(1, 9)) and [h.step for h in main] == list(range(9, 17))
    # the DVC plot table holds the same curve: both phases, one step count, the logged losses
    loss = pd.read_csv(project / "reports/train_loss.csv")
    assert list(loss["step"]) == list(range(1, 17)) and list(loss["phase"][:8].unique()) == ["pretrain"]
    assert loss["loss"].tolist() == pytest.approx([h.value for h in pre + main], rel=1e-6)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/train_loss.csv", "plots/train_loss.png"}
    assert (project / "reports/train_loss.png").stat().st_size > 5000
    assert not any((project / "models/checkpoints").glob("*/ckpt-*"))  # a finished run keeps no resume points
    assert run.data.params["pretrain.method"] == "vital"
