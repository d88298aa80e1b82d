"""The real recipe as the pipeline default: params overlays, the held-out split, PMOD pre-training
settings, the two baselines, and scoring labelled folders (`qualitune evaluate --root`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from media_factory import write_image
from project_factory import base_params
from vlm_factory import tiny_scorer_dir

ROOT = Path(__file__).resolve().parents[1]


# -- defaults and overlays --------------------------------------------------------------------------


def test_params_default_to_the_compact_backend_and_the_measured_recipe():
    from qualitune.training import TrainSettings
    from qualitune.vlm.model import COMPACT_NAME

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["model"]["name_or_path"] == COMPACT_NAME
    s = TrainSettings.from_params(params["train"])
    assert (s.method, s.tuning, s.answer_format, s.loss_on) == ("iovqa", "warmup", "integer", "value")


@pytest.mark.parametrize("name", ["tiny-qwen.yaml", "real-data.yaml", "qwen2.5-vl-7b.yaml"])
def test_every_committed_overlay_names_only_keys_params_yaml_has(name):
    from qualitune import overlay

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay.check_keys(
        params, overlay.leaves(overlay.read_overlay(ROOT / "configs" / "params" / name), params)
    )


def test_overlay_refuses_a_typo_and_flattens_to_dvc_flags():
    from qualitune import overlay

    params = {"train": {"epochs": 2, "lora": {"r": 8}}, "ingest": {"options": {"labels": "x"}}}
    with pytest.raises(ValueError, match="train.epoch"):
        overlay.check_keys(params, [("train.epoch", 3)])
    changes = overlay.leaves(
        {"train": {"lora": {"r": 16}, "epochs": 1}, "ingest": {"options": {"split_col": None}}}
    )
    overlay.check_keys(params, changes)  # a new format option is allowed
    assert overlay.dvc_set_flags(changes) == [
        "-S",
        "train.lora.r=16",
        "-S",
        "train.epochs=1",
        "-S",
        "ingest.options.split_col=null",
    ]
    assert overlay.apply(params, changes)["train"] == {"epochs": 1, "lora": {"r": 16}}
    assert overlay.dvc_set_flags([("ingest.options.scale", [0, 1])]) == ["-S", "ingest.options.scale=[0,1]"]
    # a mapping where params.yaml has null is one value: nothing to merge into
    assert overlay.leaves({"ingest": {"holdout": {"n": 5}}}, {"ingest": {"holdout": None}}) == [
        ("ingest.holdout", {"n": 5})
    ]
    with pytest.raises(ValueError, match="key=value"):
        overlay.parse_assignment("train.epochs")


def test_the_tiny_overlay_selects_the_tiny_qwen():
    from qualitune.vlm.model import TINY_NAME

    assert base_params()["model"]["name_or_path"] == TINY_NAME


def test_experiment_command_line_is_dvc_exp_run_with_the_overlay(tmp_path):
    from qualitune.experiment import dvc_command, experiment_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"out": "models/scorer", "epochs": 2}}))
    (tmp_path / "o.yaml").write_text(yaml.safe_dump({"train": {"out": "models/real/scorer"}}))
    changes, params = experiment_params(tmp_path / "o.yaml", ["train.epochs=1"], tmp_path / "params.yaml")
    assert params["train"] == {"out": "models/real/scorer", "epochs": 1}
    cmd = dvc_command("real", changes)
    assert cmd[1:] == [
        "-m",
        "dvc",
        "exp",
        "run",
        "--name",
        "real",
        "--force",
        "-S",
        "train.out=models/real/scorer",
        "-S",
        "train.epochs=1",
    ]
    with pytest.raises(ValueError, match="not in params.yaml"):
        experiment_params(tmp_path / "o.yaml", ["train.epocs=1"], tmp_path / "params.yaml")


def test_experiment_command_parses_overlays_targets_and_sets():
    from qualitune.cli import build_parser

    a = build_parser().parse_args(
        ["experiment", "a.yaml", "b.yaml", "--name", "x", "--target", "evaluate", "--set", "train.epochs=1"]
    )
    assert (a.overlays, a.name, a.target, a.set) == (
        ["a.yaml", "b.yaml"],
        "x",
        ["evaluate"],
        ["train.epochs=1"],
    )


# -- the held-out split ------------------------------------------------------------------------------


def _labelled_root(root: Path, n: int, *, scale=(0.0, 1.0)) -> Path:
    names = [f"p ({i}).png" for i in range(n)]  # spaces and parentheses, as BIQ2021's names
    for i, name in enumerate(names):
        write_image(root / "images" / name, seed=i, size=(40, 32))
    lo, hi = scale
    mos = lo + (hi - lo) * (np.arange(n) % 7) / 6
    pd.DataFrame({"image_name": names, "mos": mos}).to_csv(root / "labels.csv", index=False)
    return root


def test_holdout_is_a_fixed_seeded_test_split_and_the_rest_keeps_its_seeded_val(tmp_path):
    from qualitune.ingest import ingest

    root = _labelled_root(tmp_path / "r", 40)
    opts = {"labels": "labels.csv", "name_col": "image_name", "mos_col": "mos", "scale": [0, 1]}
    ratios = {"train": 0.8, "val": 0.2}
    df = ingest("csv", root, split_ratios=ratios, seed=0, holdout={"n": 7, "seed": 3}, **opts)
    df["name"] = df["item_id"].str.split("/", n=1).str[1]
    names = pd.read_csv(root / "labels.csv")["image_name"]
    expected = set(names.iloc[np.random.default_rng(3).permutation(40)[:7]])
    assert set(df.loc[df["split"] == "test", "name"]) == expected
    # the val split of the other 33 is the one a root holding only them gets (no item moves)
    rest = tmp_path / "rest"
    (rest / "images").mkdir(parents=True)
    keep = pd.read_csv(root / "labels.csv")
    keep = keep[~keep["image_name"].isin(expected)]
    keep.to_csv(rest / "labels.csv", index=False)
    for n in keep["image_name"]:
        (rest / "images" / n).symlink_to(root / "images" / n)
    alone = ingest("csv", rest, split_ratios=ratios, seed=0, dataset="r", **opts)
    alone["name"] = alone["item_id"].str.split("/", n=1).str[1]
    got = df[df["split"] != "test"].set_index("name")["split"]
    assert (alone.set_index("name")["split"] == got.loc[alone["name"]]).all()
    assert df.attrs["qualitune"]["split"]["holdout"] == {"n": 7, "seed": 3}
    with pytest.raises(ValueError, match="holdout.n"):
        ingest("csv", root, split_ratios=ratios, holdout={"n": 40}, **opts)


def test_holdout_refuses_a_dataset_with_an_official_split(tmp_path):
    from qualitune.ingest import ingest

    root = _labelled_root(tmp_path / "r", 6)
    labels = pd.read_csv(root / "labels.csv").assign(split=["train", "test"] * 3)
    labels.to_csv(root / "labels.csv", index=False)
    with pytest.raises(ValueError, match="official split"):
        ingest(
            "csv",
            root,
            labels="labels.csv",
            name_col="image_name",
            mos_col="mos",
            scale=[0, 1],
            holdout={"n": 2},
        )


# -- PMOD pre-training settings ----------------------------------------------------------------------


def test_pretrain_settings_overlay_the_train_section():
    from qualitune.training import TrainSettings

    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    assert (
        TrainSettings.pretrain_from_params({**train, "pretrain": {**train["pretrain"], "enabled": False}})
        is None
    )
    pre = TrainSettings.pretrain_from_params({**train, "pretrain": {**train["pretrain"], "enabled": True}})
    assert pre.method == "vital" and pre.vital.target == "pmod" and pre.epochs == 1
    assert (pre.batch_size, pre.lora, pre.tuning) == (
        train["batch_size"],
        TrainSettings.from_params(train).lora,
        "warmup",
    )
    assert pre.vital.kl_weight == train["vital"]["kl_weight"]  # the rest of vital comes from train
    with pytest.raises(ValueError, match="vital.target: pmod"):
        TrainSettings.pretrain_from_params({**train, "pretrain": {"enabled": True, "method": "iovqa"}})
    with pytest.raises(ValueError, match="unknown keys"):
        TrainSettings.pretrain_from_params({**train, "pretrain": {"enabled": True, "epoch": 1}})
    # warmup (projector + LoRA) may precede lora (the same LoRA alone); no other change of mode
    lora_after = {
        **train,
        "tuning": "lora",
        "pretrain": {**train["pretrain"], "enabled": True, "tuning": "warmup"},
    }
    assert TrainSettings.pretrain_from_params(lora_after).tuning == "warmup"
    with pytest.raises(ValueError, match="warmup before lora"):
        TrainSettings.pretrain_from_params({**lora_after, "tuning": "full"})
    with pytest.raises(ValueError, match="warmup before lora"):
        TrainSettings.pretrain_from_params(
            {**lora_after, "pretrain": {**lora_after["pretrain"], "tuning": "lora"}, "tuning": "warmup"}
        )


# -- baselines ---------------------------------------------------------------------------------------


def test_linear_probe_picks_alpha_on_val_and_predicts_every_row_with_features():
    from qualitune.baselines import ALPHAS, linear_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 10))
    y = x[:, 0] * 2 + rng.normal(scale=0.3, size=120)
    x[5] = np.nan  # an unreadable item
    split = np.array(["train", "val", "test"])[np.arange(120) % 3]
    probe = linear_probe(x, y, split == "train", split == "val")
    assert probe.alpha in ALPHAS and np.isnan(probe.predictions[5])
    test = (split == "test") & np.isfinite(probe.predictions)
    assert np.corrcoef(probe.predictions[test], y[test])[0, 1] > 0.9
    with pytest.raises(ValueError, match="val items"):
        linear_probe(x, y, split == "train", np.zeros(120, dtype=bool))


def test_linear_probe_is_fitted_on_train_only():
    """Val labels choose the penalty and nothing else: the predictions are the train-only ridge at
    that penalty, so the probe's val figure is not an in-sample one (a train + val refit fails this)."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    from qualitune.baselines import linear_probe

    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 6))
    y = x @ rng.normal(size=6) + rng.normal(scale=0.5, size=90)
    split = np.array(["train", "val", "test"])[np.arange(90) % 3]
    train = split == "train"
    probe = linear_probe(x, y, train, split == "val")
    scaler = StandardScaler().fit(x[train])
    expect = Ridge(alpha=probe.alpha).fit(scaler.transform(x[train]), y[train]).predict(scaler.transform(x))
    np.testing.assert_allclose(probe.predictions, expect, rtol=1e-9, atol=1e-9)


def test_baselines_of_a_scorer_on_a_manifest(tmp_path):
    from qualitune.baselines import evaluate_baselines
    from qualitune.scorer import Scorer
    from vlm_factory import training_frame

    df = training_frame(tmp_path / "m", n=18, splits=("train", "val", "test"))
    df.loc[2, "path"] = str(tmp_path / "gone.png")  # a test item whose file is gone
    scorer = Scorer.load(tiny_scorer_dir(tmp_path / "s"))
    metrics, info = evaluate_baselines(scorer, df, ["val", "test"], batch_size=4)
    assert info["unreadable"] == 1 and info["feature_dim"] > 0
    for split in ("val", "test"):
        assert set(metrics[split]) == {"linear_probe", "pmod_mean"}
        assert metrics[split]["pmod_mean"]["srcc"] > 0.8  # the factory's PMOD mean tracks MOS
        assert np.isfinite(metrics[split]["linear_probe"]["srcc"])
    assert metrics["test"]["linear_probe"]["n"] == 5 and metrics["test"]["pmod_mean"]["n"] == 6


# -- labelled folders --------------------------------------------------------------------------------


def _bad_root(tmp_path: Path) -> Path:
    root = _labelled_root(tmp_path / "folder", 10)
    (root / "images" / "p (3).png").unlink()  # missing
    (root / "images" / "p (4).png").write_bytes(b"not an image at all")  # corrupt
    labels = pd.read_csv(root / "labels.csv")
    labels.loc[5, "mos"] = 1.7  # outside the given scale [0, 1]
    labels.to_csv(root / "labels.csv", index=False)
    return root


def test_evaluate_root_counts_and_lists_what_it_cannot_score(tmp_path):
    from qualitune.evaluate import evaluate_root, infer_scale
    from qualitune.scorer import Scorer

    assert infer_scale([0.2, 0.9]) == (0.0, 1.0) and infer_scale([12, 80]) == (0.0, 100.0)
    with pytest.raises(ValueError, match="--scale"):
        infer_scale([-3, 400])
    root = _bad_root(tmp_path)
    scorer = Scorer.load(tiny_scorer_dir(tmp_path / "s"))
    r = evaluate_root(scorer, root, scale=(0.0, 1.0), batch_size=4)
    reasons = {f["name"]: f["reason"] for f in r["failed"]}
    assert r["n"] + r["n_failed"] == 10 and r["n_failed"] == 3
    assert reasons["p (3).png"] == "file not found"
    assert "outside the scale [0, 1]" in reasons["p (5).png"]
    assert "p (4).png" in reasons  # unreadable: the decoder's reason
    assert {"srcc", "plcc", "krcc", "final"} <= set(r) and r["scale_source"] == "given"
    inferred = evaluate_root(scorer, root, batch_size=4)  # 1.7 fits [0, 5]: scored, not failed
    assert inferred["scale"] == [0.0, 5.0] and inferred["n_failed"] == 2


def test_qualitune_evaluate_writes_one_object_per_root(tmp_path, capsys):
    from qualitune.cli import main

    good = _labelled_root(tmp_path / "good", 8, scale=(1.0, 5.0))
    bad = _bad_root(tmp_path)
    scorer = tiny_scorer_dir(tmp_path / "s")
    out = tmp_path / "out.json"
    args = ["evaluate", "--model", str(scorer), "--root", str(good), "--out", str(out), "--batch-size", "4"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    assert list(res) == ["good"] and res["good"]["n"] == 8 and res["good"]["n_failed"] == 0
    assert res["good"]["scale"] == [1.0, 5.0]
    assert main([*args, "--root", str(bad)]) == 1  # failures: written, and the exit status says so
    res = json.loads(out.read_text())
    assert set(res) == {"good", "folder"} and res["folder"]["n_failed"] == 2
    assert main([*args, "--scale", "0", "1"]) == 1  # a scale that doesn't fit: rows reported, not dropped
    assert json.loads(out.read_text())["good"]["n_failed"] == 6
    assert "not scored: p (3).png: file not found" in capsys.readouterr().err


def test_the_ablation_table_reads_each_experiments_metrics():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_data_ablation as abl

    m = {
        "val": {"expected": {"srcc": 0.9}},
        "test": {
            "expected": {"srcc": 0.8, "plcc": 0.81},
            "baselines": {"linear_probe": {"srcc": 0.7}, "pmod_mean": {"srcc": 0.5}},
        },
        "instability": {"share_level_changed": 0.25},
    }

    def exp(name: str, srcc: float) -> dict:
        data = {**m, "test": {**m["test"], "expected": {"srcc": srcc, "plcc": 0.81}}}
        return {"name": name, "revs": [{"data": {"metrics": {abl.METRICS: {"data": data}}}}]}

    other = {"name": "real-data", "revs": [{"data": {"metrics": {}}}]}
    shown = [
        {"rev": "workspace", "experiments": None},
        {"rev": "abc", "experiments": [exp("abl-integer", 0.85), exp("abl-decimal", 0.8), other]},
    ]
    s = abl.summary(shown)
    assert s["n_train"] == 500 and [r["variant"] for r in s["rows"]] == ["decimal", "integer"]  # ladder order
    assert s["not_run"] == ["integer-mask", "pmod-pretrain", "two-stage"]  # said, not silently missing
    assert s["rows"][0] == {
        "variant": "decimal",
        "overrides": abl.VARIANTS["decimal"],
        "test_srcc": 0.8,
        "test_plcc": 0.81,
        "val_srcc": 0.9,
        "probe_srcc": 0.7,
        "pmod_mean_srcc": 0.5,
        "share_level_changed": 0.25,
    }
