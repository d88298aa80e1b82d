"""The real-data benchmark's helpers: scale inference, root splitting, recipe overrides, the probe."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


real_data = _load("real_data")
split_root = _load("split_root")


def _root(tmp_path: Path, n: int, name: str = "ds") -> Path:
    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        fname = f"img ({i}).jpg"  # BIQ2021's names have spaces and parentheses
        Image.new("RGB", (16, 16), (i * 7 % 255, 0, 0)).save(root / "images" / fname)
        rows.append({"image_name": fname, "mos": i / n, "extra": "ignored"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def test_infer_scale_picks_the_smallest_standard_range():
    assert real_data.infer_scale(np.array([0.1, 0.9])) == (0.0, 1.0)
    assert real_data.infer_scale(np.array([1.2, 4.8])) == (1.0, 5.0)
    assert real_data.infer_scale(np.array([0.5, 4.8])) == (0.0, 5.0)
    assert real_data.infer_scale(np.array([3.0, 87.0])) == (0.0, 100.0)
    with pytest.raises(ValueError, match="--scale"):
        real_data.infer_scale(np.array([-3.0, 2.0]))


def test_split_root_partitions_every_row_once(tmp_path):
    root = _root(tmp_path, 20)
    n_train, n_held = split_root.split_root(root, tmp_path / "tr", tmp_path / "ho", heldout=6, seed=3)
    assert (n_train, n_held) == (14, 6)
    tr = pd.read_csv(tmp_path / "tr" / "labels.csv")
    ho = pd.read_csv(tmp_path / "ho" / "labels.csv")
    assert set(tr.image_name).isdisjoint(ho.image_name)
    assert sorted(set(tr.image_name) | set(ho.image_name)) == sorted(
        pd.read_csv(root / "labels.csv").image_name
    )
    assert all((tmp_path / "ho" / "images" / n).is_symlink() for n in ho.image_name)
    (root / "images" / "img (3).jpg").unlink()
    with pytest.raises(ValueError, match="missing"):
        split_root.split_root(root, tmp_path / "a", tmp_path / "b", heldout=6, seed=3)


def test_load_root_reads_any_scale_and_reports_bad_photos(tmp_path):
    root = _root(tmp_path, 12)
    df = real_data.load_root(root, role="train", val_share=0.25, seed=0)
    assert set(df["split"]) == {"train", "val"} and len(df) == 12
    assert df["mos_norm"].between(1, 5).all()
    (root / "images" / "img (2).jpg").write_bytes(b"not a jpeg")
    bad = real_data.check_readable(df)
    assert list(bad["path"].map(lambda p: Path(p).name)) == ["img (2).jpg"]
    held = real_data.load_root(root, role="eval", val_share=0.0, seed=0)
    assert set(held["split"]) == {"test"}
    with pytest.raises(ValueError, match="labels.csv"):
        real_data.load_root(tmp_path, role="eval", val_share=0.0, seed=0)


def test_recipe_overrides_are_typed(tmp_path):
    recipe = real_data.load_recipe(
        real_data.DEFAULT_RECIPE, ["train.answer_format=decimal", "train.epochs=1", "pretrain.enabled=true"]
    )
    assert recipe["train"]["answer_format"] == "decimal"
    assert recipe["train"]["epochs"] == 1 and recipe["pretrain"]["enabled"] is True
    with pytest.raises(ValueError, match="key=value"):
        real_data.load_recipe(real_data.DEFAULT_RECIPE, ["train.epochs"])


def test_linear_probe_recovers_a_linear_target():
    rng = np.random.default_rng(0)
    n = 1500
    x = rng.normal(size=(n, 1300))
    y = x[:, :5] @ rng.normal(size=5) + rng.normal(size=n) * 0.1  # only the first 1280 columns are used
    idx = np.arange(n)
    train, val, test = idx < 1000, (idx >= 1000) & (idx < 1250), idx >= 1250
    pred, alpha = real_data.linear_probe(x, y, train, val)
    assert np.corrcoef(pred[test], y[test])[0, 1] > 0.8
    assert alpha > 0


def test_projector_standardise_gives_unit_scale_features():
    from qualitune.vlm.compact import Projector

    proj = Projector(6, 4, 8, 5, embed_rms=2.0)
    g = torch.randn(50, 6) * torch.tensor([1.0, 10, 100, 0.1, 5, 1]) + 7
    m = torch.randn(50, 4, 4) * 3 - 2
    proj.standardise(g, m)
    z = (g - proj.global_shift) * proj.global_gain
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(6), atol=1e-3)
    out = proj(g, m)
    assert out.shape == (50, 5, 5)
    assert torch.allclose(out.pow(2).mean(-1).sqrt(), torch.full((50, 5), 2.0), atol=1e-3)


def _photo_root(tmp_path: Path, n: int, name: str, seed: int) -> Path:
    """A root of textured photos large enough for every annotator (NIQE needs 96-px blocks)."""
    from media_factory import write_image

    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    names = [f"p ({i}).jpg" for i in range(n)]
    for i, fname in enumerate(names):
        write_image(root / "images" / fname, seed=seed + i, size=(256, 224))
    mos = np.linspace(1.0, 5.0, n)
    pd.DataFrame({"image_name": names, "mos": mos}).to_csv(root / "labels.csv", index=False)
    return root


@pytest.mark.slow
def test_train_then_evaluate_the_saved_scorer_on_a_new_root(tmp_path, capsys):
    """End to end on tiny roots: train + save, then `--scorer` scores another root without training."""
    import json

    train = _photo_root(tmp_path, 24, "train_ds", seed=0)
    first = _photo_root(tmp_path, 6, "eval_a", seed=100)
    second = _photo_root(tmp_path, 6, "eval_b", seed=200)
    common = ["--train-root", str(train), "--cache", str(tmp_path / "ann"), "--feature-cache", ""]
    common += ["--threads", "2", "--batch-size", "4", "--speed-items", "4"]
    sets = [
        "train.epochs=1",
        "train.batch_size=4",
        "eval.modes=[expected]",
        "instability.n=0",
        "val_share=0.25",
    ]
    common += [a for s in sets for a in ("--set", s)]
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    saved = tmp_path / "scorer"
    assert (
        real_data.main([*common, "--eval-root", str(first), "--out", str(out1), "--save-scorer", str(saved)])
        == 0
    )
    res1 = json.loads(out1.read_text())
    assert res1["eval_a"]["n"] == 6 and set(res1["eval_a"]["baselines"]) == {"pmod_mean", "linear_probe"}
    assert res1["run"]["history"]["train"]["steps"] > 0 and "train" in res1["wall_seconds"]
    assert (saved / "qualitune_scorer.json").is_file()

    assert (
        real_data.main([*common, "--eval-root", str(second), "--out", str(out2), "--scorer", str(saved)]) == 0
    )
    res2 = json.loads(out2.read_text())
    assert res2["run"]["history"] == {"scorer": str(saved), "trained": False}
    assert "train" not in res2["wall_seconds"]
    assert res2["eval_b"]["n"] == 6 and all(np.isfinite(res2["eval_b"][k]) for k in ("srcc", "plcc"))
    # the probe and PMOD come from the same train subset and seed: identical on the train root's val split
    val = "val:train_ds"
    assert res2[val]["baselines"]["linear_probe"] == res1[val]["baselines"]["linear_probe"]
    assert res2[val]["srcc"] == pytest.approx(res1[val]["srcc"], abs=1e-6)  # same scorer, reloaded
    with pytest.raises(SystemExit):
        real_data.main(
            [
                *common,
                "--eval-root",
                str(second),
                "--out",
                str(out2),
                "--scorer",
                str(saved),
                "--save-scorer",
                "x",
            ]
        )
