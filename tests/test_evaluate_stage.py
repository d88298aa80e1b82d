"""The evaluate stage on a trained tiny scorer: every output is written and holds real numbers."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from test_train_stage import _project
from vlm_factory import run_stages_in


def test_evaluate_stage_writes_metrics_plots_and_analyses(tmp_path):
    from qualitune.stages import evaluate as evaluate_stage
    from qualitune.stages import train as train_stage

    project = _project(tmp_path / "p", tuning="full", lr=2e-3, epochs=1, checkpoint_every=0)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["pmod"]["out"] = "data/pmod.parquet"
    params["evaluate"].update(splits=["val", "train"], batch_size=4)
    params["evaluate"]["instability"].update(sample=4, repeats=3)
    params["evaluate"]["lens"]["sample"] = 3
    params["evaluate"]["attention"]["sample"] = 3
    params["mlflow"]["enabled"] = False
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_stages_in(project, train_stage, evaluate_stage)
    m = json.loads((project / params["evaluate"]["metrics"]).read_text())
    for split, n in (("val", 8), ("train", 16)):
        for mode in ("expected", "greedy"):
            got = m[split][mode]
            assert got["n"] + got["n_missing"] == n
            assert {"srcc", "krcc", "plcc", "plcc_logistic", "rmse", "final", "parse_failure_rate"} <= set(
                got
            )
    for split in ("val", "train"):  # both baselines beside the VLM, on the same items
        base = m[split]["baselines"]
        assert set(base) == {"linear_probe", "pmod_mean"}
        assert (
            base["pmod_mean"]["srcc"] > 0.8
            and base["pmod_mean"]["n"] == m[split]["expected"]["n"] + m[split]["expected"]["n_missing"]
        )
        assert -1.0 <= base["linear_probe"]["srcc"] <= 1.0
    assert m["linear_probe"]["alpha"] > 0 and m["linear_probe"]["unreadable"] == 0
    inst = m["instability"]
    assert inst["items"] == 4 and inst["repeats"] == 3
    assert 0.0 <= inst["share_changed"] <= 1.0 or inst["items_scored"] == 0
    lens = pd.read_csv(project / params["evaluate"]["lens"]["table"])
    n_layers = 2 + 1  # tiny decoder layers + embeddings
    assert set(lens["layer"]) == set(range(n_layers)) and lens["rank"].max() == 5
    assert lens.groupby(["item", "layer"])["prob"].apply(lambda p: p.is_monotonic_decreasing).all()
    att = pd.read_csv(project / params["evaluate"]["attention"]["table"])
    shares = att.groupby("layer")["share"].sum()
    assert ((shares - 1.0).abs() < 1e-4).all()  # image + description + prompt = all attention
    assert att[att["part"] == "image"]["share"].gt(0).all()
    for key in ("heatmap",):
        assert (project / params["evaluate"]["lens"][key]).stat().st_size > 1000
    scatter = pd.read_csv(project / params["evaluate"]["scatter"])
    assert {"mos_norm", "score_1_5", "split"} <= set(scatter.columns) and len(scatter) == 24
    assert (project / params["evaluate"]["scatter_plot"]).stat().st_size > 5000


def test_summary_line_names_each_split_its_baselines_and_failures():
    from qualitune.pipeline.evaluate import summary_line

    m = {
        "val": {"expected": {"srcc": 0.5, "plcc": 0.6, "parse_failures": 2, "media_errors": 1}},
        "test": {
            "expected": {"srcc": 0.83, "plcc": 0.857, "parse_failures": 0},
            "baselines": {"linear_probe": {"srcc": 0.77}, "pmod_mean": {"srcc": 0.554}},
        },
        "instability": {"share_level_changed": 0.3125},
    }
    assert summary_line(m, "expected") == (
        "evaluate (expected): test SRCC 0.830 PLCC 0.857 (linear probe 0.770, pmod mean 0.554); "
        "val SRCC 0.500 PLCC 0.600, 3 not scored; level changed on 31% of repeated queries"
    )
