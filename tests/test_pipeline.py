"""The DVC stages end to end on a shrunken copy of the real params.yaml (each stage's own `main`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from qualitune.manifest import read_manifest
from qualitune.stages import annotate, build_demo, ingest, labels, pmod, validate

ROOT = Path(__file__).resolve().parents[1]


def test_stages_chain_on_small_demo(tmp_path, monkeypatch, capsys):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(
        crops_per_image=1, distortions=["gaussian_blur", "white_noise", "jpeg"], n_video_clips=6, workers=1
    )
    params["annotate"].update(annotators=["niqe", "sharpness", "blur", "noise"], workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # every path in params is relative to the project root
    for stage in (build_demo, ingest, validate, labels, annotate, pmod):
        assert stage.main(["--params", "params.yaml"]) == 0, stage.__name__
    out = capsys.readouterr().out.splitlines()
    (pmod_line,) = [
        line for line in out if line.startswith("pmod")
    ]  # one summary line, no per-annotator list
    assert "PMOD-mean SRCC vs MOS" in pmod_line and "best single annotator" in pmod_line

    labeled = read_manifest(params["labels"]["out"])
    assert {"image", "video"} == set(labeled["media"])
    assert labeled["label_int"].between(10, 50).all()
    final = read_manifest(params["pmod"]["out"])
    assert len(final) == len(labeled) and final["pmod_mean"].notna().all()
    data_metrics = json.loads(Path(params["validate"]["metrics"]).read_text())
    assert data_metrics["n_quarantined"] == 0 and data_metrics["n_valid"] == len(labeled)
    pm = json.loads(Path(params["pmod"]["metrics"]).read_text())
    assert set(pm["pmod"]) <= {"train", "val", "test"} and "pmod_mean" in pm["pmod"]["train"]
    corr = pd.read_csv(params["pmod"]["plot_correlations"])
    assert {"split", "annotator", "srcc", "plcc"} <= set(corr.columns)
    # each annotator's calibration curve: the table DVC draws follows the fitted calibration
    curves = pd.read_csv(params["pmod"]["plot_calibration"])
    fitted = json.loads(Path(params["pmod"]["calibrations"]).read_text())
    assert set(curves["annotator"]) == set(fitted) == {"niqe", "sharpness", "blur", "noise"}
    for name, g in curves.groupby("annotator"):
        c = fitted[name]
        assert g["raw"].min() == min(c["x"]) and g["raw"].max() == max(c["x"])
        assert g["calibrated"].between(1, 5).all()
        # a lower-is-better score (NIQE) maps to a falling curve, a higher-is-better one to a rising
        trend = g["calibrated"].iloc[-1] - g["calibrated"].iloc[0]
        assert (trend >= 0) == c["higher_is_better"] or trend == 0, name
    assert Path(params["pmod"]["calibration_png"]).stat().st_size > 5000


def test_a_bad_manifest_fails_the_validate_stage(tmp_path, monkeypatch):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    pd.DataFrame({"name": ["gone.jpg"], "mos": [3.0], "split": ["train"]}).to_csv(
        root / "labels.csv", index=False
    )
    params["ingest"].update(
        root=str(root),
        options={"labels": "labels.csv", "name_col": "name", "mos_col": "mos", "scale": [1, 5]},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert ingest.main(["--params", "params.yaml"]) == 0  # ingest keeps the row...
    assert validate.main(["--params", "params.yaml"]) == 1  # ...the gate fails on it
    q = pd.read_csv(params["validate"]["quarantine"])
    assert "file not found" in q.loc[0, "reason"]
