"""The compact backend's probe-anchored quality token: the fit, its freezing, saving and the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from qualitune.errors import QualituneError
from qualitune.vlm.backends.compact.anchor import add_anchor, anchor_vocabulary, fit_anchor
from qualitune.vlm.model import COMPACT_NAME, load_model, make_processor
from qualitune.vlm.tasks import AnswerFormat
from qualitune.vlm.trainable import TUNINGS, apply_tuning, part_of
from qualitune.vlm.unwrap import unwrap_model

INTEGER = AnswerFormat("integer", 10, 50)


def _noisy_frame(root: Path, n: int = 18) -> pd.DataFrame:
    """Photos of one scene with noise whose strength falls as MOS rises (what a probe can read);
    every third row is val."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    scene = np.stack([xx * 2.5, yy * 2.5, (xx + yy) * 1.2], axis=-1)
    rows = []
    for i in range(n):
        mos = 1.0 + 4.0 * i / (n - 1)
        arr = np.clip(scene + rng.normal(0, 12 * (5.0 - mos) + 1, scene.shape), 0, 255).astype(np.uint8)
        path = root / f"p{i}.png"
        Image.fromarray(arr).save(path)
        split = "val" if i % 3 == 1 else "train"
        rows.append(
            {"item_id": f"p{i}", "path": str(path), "media": "image", "mos_norm": mos, "split": split}
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return _noisy_frame(tmp_path_factory.mktemp("anchor_data"))


@pytest.fixture(scope="module")
def anchored(frame):
    model, tok = load_model(COMPACT_NAME, seed=0)
    ids, _, _ = anchor_vocabulary(tok, INTEGER)
    add_anchor(model, len(ids))
    proc = make_processor(model, 0, 0)
    fit = fit_anchor(model, proc, tok, frame[frame.split == "train"], frame[frame.split == "val"], INTEGER)
    return model, tok, proc, fit


def test_anchor_words_are_the_answers_first_tokens_or_the_level_words():
    _, tok = load_model(COMPACT_NAME, seed=0)
    ids, centres, texts = anchor_vocabulary(tok, INTEGER)
    assert texts == ["1", "2", "3", "4", "5"]
    assert centres == pytest.approx([1.45, 2.45, 3.45, 4.45, 5.0])  # "3" covers 30-39 -> 3.0-3.9 on 1-5
    assert ids == [tok.convert_tokens_to_ids(t) for t in texts]
    # [0, 100] mixes one-, two- and three-digit answers: no single first token per bin
    ids, centres, texts = anchor_vocabulary(tok, AnswerFormat("integer", 0, 100))
    assert [t.strip() for t in texts] == ["bad", "poor", "fair", "good", "excellent"]
    assert centres == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_the_anchor_is_the_gaussian_assignment_of_the_val_chosen_ridge_probe(anchored, frame):
    """Recompute the probe independently (features, standardisation, LayerNorm, ridge with the
    penalty chosen on val) and check the anchor's weights are exactly its Gaussian soft assignment."""
    from qualitune.baselines import linear_probe, pooled_features

    model, tok, proc, fit = anchored
    train, val = frame[frame.split == "train"], frame[frame.split == "val"]
    both = pd.concat([train, val], ignore_index=True)
    feats, errors = pooled_features(model, proc, both["path"].tolist(), global_vector=True)
    assert (
        errors == [None] * len(both)
        and feats.shape[1] == unwrap_model(model).model.visual.merger.global_shift.numel()
    )
    is_train = np.arange(len(both)) < len(train)
    x = (feats - feats[is_train].mean(0)) / np.clip(feats[is_train].std(0), 1e-4, None)
    z = F.layer_norm(torch.from_numpy(x).float(), (x.shape[1],)).double().numpy()
    probe = linear_probe(z, both["mos_norm"].to_numpy(), is_train, ~is_train)
    assert fit["alpha"] == probe.alpha and fit["probe_val_srcc"] == pytest.approx(probe.val_srcc, abs=1e-4)
    rmse = float(
        np.sqrt(np.mean((probe.predictions[~is_train] - both["mos_norm"].to_numpy()[~is_train]) ** 2))
    )
    assert fit["sigma"] == pytest.approx(max(rmse, 0.25), abs=1e-4)

    anchor = unwrap_model(model).model.visual.merger.anchor
    with torch.no_grad():
        w = anchor.mixture(torch.from_numpy(feats).float()).double().numpy()
    c = np.array(fit["centres"])
    logits = -((probe.predictions[:, None] - c[None, :]) ** 2) / (2 * fit["sigma"] ** 2)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert np.abs(w - expected).max() < 2e-3
    # the logits give the probe's prediction back (the evaluate stage's `anchor_probe` baseline)
    with torch.no_grad():
        back = anchor.probe_scores(torch.from_numpy(feats).float()).double().numpy()
    np.testing.assert_allclose(back, probe.predictions, atol=2e-3)
    # ...and the token itself is that mixture of the decoder's own digit embeddings
    emb = unwrap_model(model).get_input_embeddings().weight
    ids, _, _ = anchor_vocabulary(tok, INTEGER)
    assert torch.equal(anchor.embeds, emb[ids])


def test_every_tuning_mode_leaves_the_anchor_frozen():
    for tuning in TUNINGS:
        model, tok = load_model(COMPACT_NAME, seed=0)
        add_anchor(model, 5)
        model = apply_tuning(model, tuning)
        anchor = [p for n, p in model.named_parameters() if part_of(n) == "anchor"]
        assert len(anchor) == 7 and not any(p.requires_grad for p in anchor), tuning


def test_the_anchor_adds_one_token_per_image_and_refuses_other_models():
    model, tok = load_model(COMPACT_NAME, seed=0)
    n = model.config.n_visual_tokens
    add_anchor(model, 5)
    add_anchor(model, 5)  # idempotent
    assert model.config.n_visual_tokens == n + 1 == make_processor(model, 0, 0).n_tokens
    with pytest.raises(QualituneError, match="already has an anchor of 5"):
        add_anchor(model, 4)
    tiny, _ = load_model("tiny-qwen2.5-vl", seed=0)
    with pytest.raises(QualituneError, match="model.anchor: none"):
        add_anchor(tiny, 5)


def test_train_stage_fits_the_anchor_keeps_it_and_the_scorer_reloads_it(frame, tmp_path):
    """`train_scorer` on the compact backend with the default `model.anchor: probe`: the anchor is
    fitted before training, unchanged by it, recorded in the metrics and the scorer, and a reloaded
    scorer scores exactly as the trained model did."""
    import yaml

    from qualitune.evaluate import predict_frame
    from qualitune.pipeline.train import train_scorer
    from qualitune.scorer import Scorer

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["model"]["anchor"] == "probe" and params["model"]["name_or_path"] == COMPACT_NAME
    data = tmp_path / "manifest.parquet"
    frame.assign(mos=frame["mos_norm"], mos_std=np.nan, dataset="t", scale_min=1.0, scale_max=5.0).to_parquet(
        data
    )
    params["model"]["feature_cache"] = None
    params["mlflow"]["enabled"] = False
    params["train"].update(
        data=str(data), epochs=1, batch_size=4, checkpoint_every=0, pretrain={"enabled": False},
        tuned_params=None, max_invalid_mass=1.0, val_modes=["expected"], checkpoint_dir=None,
        loss_table=str(tmp_path / "loss.csv"), loss_plot=None,
    )  # fmt: skip
    metrics = train_scorer(params, out_dir=tmp_path / "scorer", metrics_path=tmp_path / "m.json")
    fit = json.loads((tmp_path / "m.json").read_text())["anchor"]
    assert fit == metrics["anchor"] and fit["tokens"] == ["1", "2", "3", "4", "5"] and fit["n_train"] == 12
    scorer = Scorer.load(tmp_path / "scorer")
    assert scorer.spec.anchor_tokens == 5
    merger = unwrap_model(scorer.model).model.visual.merger
    assert merger.anchor is not None and scorer.image_processor.n_tokens == 6
    # the reloaded anchor is the one fitted from the same features before training
    model, tok = load_model(COMPACT_NAME, seed=0)
    add_anchor(model, 5)
    fresh = fit_anchor(
        model,
        make_processor(model, 0, 0),
        tok,
        frame[frame.split == "train"],
        frame[frame.split == "val"],
        INTEGER,
    )
    assert fresh == fit
    refit = unwrap_model(model).model.visual.merger.anchor
    for name, p in merger.anchor.named_parameters():
        torch.testing.assert_close(p, dict(refit.named_parameters())[name])
    # the reloaded scorer (anchor rebuilt from the spec, weights from the folder) scores val as the
    # trained model in memory did at the end of training
    val = frame[frame.split == "val"]
    pred = predict_frame(scorer, val, mode="expected", batch_size=4)
    from qualitune.metrics import correlations

    again = correlations(pred["score_1_5"].tolist(), val["mos_norm"].tolist())
    assert np.isfinite(pred["score"].to_numpy(dtype=float)).all()
    assert again["plcc"] == pytest.approx(metrics["val"]["expected"]["plcc"], abs=2e-3)  # float noise only
    # the evaluate stage's `anchor_probe` baseline is that probe: on val it scores what the fit chose
    from qualitune.baselines import evaluate_baselines

    base, info = evaluate_baselines(scorer, frame, ["train", "val"])
    assert base["val"]["anchor_probe"]["srcc"] == pytest.approx(fit["probe_val_srcc"], abs=1e-3)
    assert set(base["val"]) == {"linear_probe", "anchor_probe"}  # this frame has no PMOD column
    assert info["feature_dim"] == 1280  # the linear probe still reads the head's channel means
