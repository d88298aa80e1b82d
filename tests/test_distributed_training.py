"""The train stage under `accelerate launch` with two CPU processes (gloo) against one process.

The schedule splits each global batch (`train.batch_size` x processes) by process index and each
process divides its loss by its own rows, so with DDP's gradient mean two processes with
`batch_size: B` take the same optimizer steps as one process with `batch_size: 2B`: the trained
weights, the logged losses and the validation scores agree to float rounding. The data here has an
uneven last batch (15 train rows, global batch 4), where the processes hold 2 and 1 rows.

`accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.x (its multi-CPU
path needs MPI), so the test launches torchrun through accelerate's multi-process launcher
(`--multi_gpu`) with CUDA hidden: the trainer then runs `Accelerator(cpu=True)` in each process,
which accelerate sets up as MULTI_CPU with the gloo backend. Only rank 0 validates, saves and logs.

FSDP (configs/accelerate/fsdp.yaml) is refused by the stage up front: the trainer does not gather
sharded weights yet (and accelerate runs FSDP only on GPUs, so it cannot be exercised here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from project_factory import base_params
from qualitune.manifest import write_manifest
from vlm_factory import training_frame

ROOT = Path(__file__).resolve().parents[1]


def _project(tmp: Path, batch_size: int) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    df = training_frame(tmp / "media", n=22, splits=("train", "train", "val"))  # 15 train, 7 val
    write_manifest(df, tmp / "data" / "pmod.parquet")
    params = base_params()
    params["model"].update(min_pixels=56 * 56, max_pixels=84 * 84, n_frames=1)
    params["train"].update(
        data="data/pmod.parquet",
        tuning="full",
        lr=2e-3,
        epochs=2,
        batch_size=batch_size,
        checkpoint_every=0,
        val_batch_size=8,
        tuned_params=None,
    )
    params["mlflow"].update(tracking_uri="sqlite:///mlflow.db", enabled=True)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # CPU processes even on a GPU machine
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _losses(project: Path) -> list[float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("qualitune").experiment_id])
    return [
        m.value
        for m in sorted(client.get_metric_history(run.info.run_id, "train.loss"), key=lambda m: m.step)
    ]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one = _project(root / "one", batch_size=4)
    two = _project(root / "two", batch_size=2)
    _run([sys.executable, "-m", "qualitune.stages.train", "--params", "params.yaml"], one)
    out = _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(_free_port()),
            "-m",
            "qualitune.stages.train",
            "--params",
            "params.yaml",
        ],
        two,
    )
    return one, two, out


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(one_and_two):
    one, two, _ = one_and_two
    m1 = json.loads((one / "reports/train_metrics.json").read_text())
    m2 = json.loads((two / "reports/train_metrics.json").read_text())
    assert m1["train"]["optimizer_steps"] == m2["train"]["optimizer_steps"] == 8  # 2 epochs x ceil(15 / 4)
    w1 = load_file(str(one / "models/scorer/weights.safetensors"))
    w2 = load_file(str(two / "models/scorer/weights.safetensors"))
    assert w1.keys() == w2.keys() and w1
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    print(f"max |w_one - w_two| = {worst:.3g}")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4, msg=k)
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 8
    print("losses one", [round(x, 5) for x in l1])
    print("losses two", [round(x, 5) for x in l2])
    assert l2 == pytest.approx(l1, rel=1e-4, abs=1e-5)
    for mode in ("expected", "greedy"):
        a, b = m1["val"][mode], m2["val"][mode]
        for key in ("srcc", "plcc", "rmse"):  # NaN (constant greedy answers) on both sides, or close
            assert b[key] == pytest.approx(a[key], abs=1e-3, nan_ok=True), (mode, key)


@pytest.mark.slow
def test_only_the_main_process_saves_and_logs(one_and_two):
    _, two, out = one_and_two
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{two / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qualitune").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # one MLflow run, not one per process
    assert out.count("val expected: SRCC") == 1


def test_fsdp_launch_is_refused_with_the_reason(tmp_path, monkeypatch, capsys):
    """configs/accelerate/fsdp.yaml sets ACCELERATE_USE_FSDP; the stage says it is unsupported up front."""
    from qualitune.stages import train as train_stage

    project = _project(tmp_path / "p", batch_size=2)
    monkeypatch.chdir(project)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert train_stage.main(["--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "FSDP is not supported" in err and "configs/accelerate/ddp.yaml" in err
    assert not (project / "models").exists() and not (project / "mlflow.db").exists()
    fsdp = yaml.safe_load((ROOT / "configs/accelerate/fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
