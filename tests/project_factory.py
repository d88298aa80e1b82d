"""A small, real copy of the project (dvc.yaml, src/, flows/) under a tmp folder, for tests that run
`dvc repro` end to end: the real stages on an external raw dataset of a few PNGs, with params shrunk so
the whole pipeline trains and registers a tiny scorer in about a minute on two cores."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from media_factory import write_image

ROOT = Path(__file__).resolve().parents[1]
RAW = "raw"  # ingest.root of the copy: a dataset folder that grows between retraining runs
SPLITS = ("train", "train", "val", "train", "test", "val")


def base_params() -> dict:
    """The real params.yaml with the documented test-model overlay applied
    (configs/params/tiny-qwen.yaml: the tiny random Qwen2.5-VL instead of the compact backend)."""
    from qualitune import overlay

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    changes = overlay.leaves(overlay.read_overlay(ROOT / "configs" / "params" / "tiny-qwen.yaml"), params)
    overlay.check_keys(params, changes)
    return overlay.apply(params, changes)


def tiny_params() -> dict:
    """The real params.yaml on the tiny Qwen with every section shrunk to seconds (same keys, same stages)."""
    params = base_params()
    params["demo"].update(
        crops_per_image=1, distortions=["jpeg"], levels=[1, 5], n_video_clips=0, video_variants=0, workers=1
    )
    params["ingest"].update(
        root=RAW,
        options={
            "labels": "labels.csv",
            "name_col": "name",
            "mos_col": "mos",
            "std_col": "mos_std",
            "split_col": "split",
            "scale": [1, 5],
        },
    )
    params["annotate"].update(annotators=["sharpness", "noise", "contrast"], workers=1)
    params["model"].update(min_pixels=56 * 56, max_pixels=84 * 84, n_frames=1)
    params["train"].update(
        tuning="lora",
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        epochs=1,
        batch_size=4,
        val_batch_size=8,
        checkpoint_every=0,
        lr=1e-2,
        max_invalid_mass=1.0,  # a tiny model trained for seconds answers mostly off-format
    )
    params["evaluate"].update(
        modes=["expected"],
        batch_size=8,
        instability={**params["evaluate"]["instability"], "sample": 2, "repeats": 2},
        lens={**params["evaluate"]["lens"], "sample": 1},
        attention={**params["evaluate"]["attention"], "sample": 1},
    )
    params["register"].update(batch_size=8)
    params["tune"].update(n_trials=0)
    return params


def add_items(raw: Path, start: int, stop: int) -> list[str]:
    """Append items `start`..`stop-1` to the dataset folder `raw`: new PNGs under `images/` and their
    rows in `labels.csv`; returns the new files (relative to `raw`)."""
    labels = raw / "labels.csv"
    old = (
        pd.read_csv(labels) if labels.is_file() else pd.DataFrame(columns=["name", "mos", "mos_std", "split"])
    )
    rows, files = [], []
    for i in range(start, stop):
        name = f"img{i:03d}.png"
        write_image(raw / "images" / name, seed=1000 + i, size=(64 + 8 * (i % 3), 56))
        mos = float(np.clip(1.0 + 4.0 * ((i * 7) % 24) / 23.0, 1, 5))
        rows.append({"name": name, "mos": round(mos, 3), "mos_std": 0.5, "split": SPLITS[i % len(SPLITS)]})
        files.append(f"images/{name}")
    new = pd.DataFrame(rows) if old.empty else pd.concat([old, pd.DataFrame(rows)], ignore_index=True)
    new.to_csv(labels, index=False)
    return files


def make_project(dest: Path, *, n_items: int = 24, params: dict | None = None) -> Path:
    """Copy dvc.yaml, src/ and flows/ to `dest`, write tiny params and a raw dataset, `dvc init` it."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("src", "flows"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore, dirs_exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy2(ROOT / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    add_items(dest / RAW, 0, n_items)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=dest, check=True)
    return dest
