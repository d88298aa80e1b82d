"""The compact backend through the project's own trainer, scorer folder, pyfunc and server."""

from __future__ import annotations

import base64

import pandas as pd
import pytest
import torch
from PIL import Image

from qualitune.scorer import Scorer, ScorerSpec, save_scorer
from qualitune.training import TrainSettings, VitalSettings, train
from qualitune.vlm.compact import is_compact
from qualitune.vlm.inputs import _unwrap
from qualitune.vlm.model import COMPACT_NAME, load_model, make_processor
from qualitune.vlm.trainable import LoraSettings, part_of, transfer_vision, vision_weights
from vlm_factory import training_frame


def _settings(**kw) -> TrainSettings:
    base = dict(
        method="iovqa",
        tuning="warmup",
        epochs=1,
        batch_size=4,
        lr=1e-3,
        seed=0,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
    )
    base.update(kw)
    return TrainSettings(**base)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in _unwrap(model).named_parameters()}


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return training_frame(tmp_path_factory.mktemp("compact_data"), n=8)


@pytest.fixture(scope="module")
def trained(frame, tmp_path_factory):
    """IOVQA (integer-only mask) with projector + LoRA, saved as a scorer folder."""
    model, tok = load_model(COMPACT_NAME, seed=0)
    before = _snapshot(model)
    proc = make_processor(model, 0, 0)
    result = train(model, tok, proc, frame, _settings())
    result.model.eval()
    spec = ScorerSpec(base_model=COMPACT_NAME, answer_format=_settings().fmt.to_dict())
    out = save_scorer(result.model, spec, tmp_path_factory.mktemp("compact_scorer") / "scorer")
    return {"model": result.model, "tok": tok, "spec": spec, "dir": out, "before": before, "result": result}


def test_iovqa_warmup_trains_projector_and_lora_only(trained):
    model = trained["model"]
    assert is_compact(model)
    after = {n: p.detach() for n, p in _unwrap(model).named_parameters()}
    merger = _unwrap(model).model.visual.merger
    assert not (merger.global_shift == 0).all()  # standardised on the training photos before step 1
    changed = {
        part_of(n) for n, t in trained["before"].items() if n in after and not torch.equal(t, after[n])
    }
    assert changed == {"projector"}  # the base decoder and the encoder are untouched...
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for p in lora)  # ...and the adapters learned (B starts at 0)
    assert trained["result"].history[0]["loss"] > 0


def test_saved_scorer_reloads_to_the_same_scores(trained, frame):
    paths = frame["path"].tolist()[:4]
    live = Scorer(trained["model"], trained["tok"], trained["spec"])
    loaded = Scorer.load(trained["dir"])
    assert is_compact(loaded.model)
    for mode in ("expected", "greedy"):
        a = live.score_paths(paths, mode=mode).results
        b = loaded.score_paths(paths, mode=mode).results
        for x, y in zip(a, b, strict=True):
            if mode == "expected":
                assert x["score"] == pytest.approx(y["score"], abs=1e-3)  # float rounding on a 10-50 scale
            else:
                assert x["answer"] == y["answer"]


def test_pyfunc_and_server_score_base64_with_the_compact_model(trained, frame):
    from fastapi.testclient import TestClient

    from qualitune.pyfunc_model import QualituneScorerModel
    from qualitune.serving import ScoringService, ServeSettings, create_app

    scorer = Scorer.load(trained["dir"])
    raw = [open(p, "rb").read() for p in frame["path"].tolist()[:3]]
    encoded = [base64.b64encode(b).decode() for b in raw]
    reference = scorer.score_paths(frame["path"].tolist()[:3], mode="expected").results

    pyfunc = QualituneScorerModel()
    pyfunc.scorer = scorer
    rows = pyfunc.predict(None, pd.DataFrame({"image": encoded}))
    assert [r["score"] for r in rows] == pytest.approx([r["score"] for r in reference], abs=1e-4)

    service = ScoringService.from_scorer(scorer, ref="compact")
    with TestClient(create_app(service, ServeSettings(batch_size=4))) as client:
        ok = client.post("/invocations", json={"dataframe_records": [{"image": e} for e in encoded]})
        assert ok.status_code == 200
        got = [p["score"] for p in ok.json()["predictions"]]
        assert got == pytest.approx([r["score"] for r in reference], abs=1e-4)
        bad = client.post("/invocations", json={"dataframe_records": [{"image": "not base64!"}]})
        assert bad.status_code == 400
        assert client.get("/ping").status_code == 200


def test_encoder_centred_training_moves_the_encoder_and_refreshes_its_features(frame):
    """VITAL's encoder-centred mode on the compact backend: only `model.visual.encoder` trains, and
    features cached before training are not reused after it."""
    model, tok = load_model(COMPACT_NAME, seed=0)
    proc = make_processor(model, 0, 0)
    visual = model.model.visual
    image = Image.open(frame["path"].iloc[0]).convert("RGB")
    pixels = torch.from_numpy(proc([image])["pixel_values"])
    with torch.no_grad():
        g_before, _ = visual.features(pixels)
    before = _snapshot(model)
    settings = _settings(
        method="vital",
        tuning="encoder",
        lr=5e-3,
        vital=VitalSettings(compare_weight=0.0, describe_weight=0.0),
    )
    result = train(model, tok, proc, frame, settings)
    after = {n: p.detach() for n, p in _unwrap(result.model).named_parameters()}
    changed = {part_of(n) for n, t in before.items() if not torch.equal(t, after[n])}
    assert changed == {"vision"}
    with torch.no_grad():
        g_after, _ = visual.features(pixels)
    assert not torch.allclose(g_before, g_after)

    target, _ = load_model(COMPACT_NAME, seed=1)  # VITAL's transfer: the trained encoder moves over
    n = transfer_vision(result.model, target)
    assert n > 0
    moved = vision_weights(target)
    src = vision_weights(result.model)
    assert all(torch.equal(moved[k], src[k]) for k in src)


@pytest.mark.slow
def test_two_stage_compact_scores_from_its_own_description(frame):
    model, tok = load_model(COMPACT_NAME, seed=0)
    proc = make_processor(model, 0, 0)
    result = train(model, tok, proc, frame, _settings(method="two_stage", stage1_epochs=1, epochs=1))
    result.model.eval()
    spec = ScorerSpec(base_model=COMPACT_NAME, answer_format=_settings().fmt.to_dict(), two_stage=True)
    run = Scorer(result.model, tok, spec).score_paths(frame["path"].tolist()[:2], mode="expected")
    assert len(run.results) == 2
    assert all("description" in r for r in run.results)
    assert all(r["score"] is None or 10 <= r["score"] <= 50 for r in run.results)


def test_compact_image_processor_resizes_whole_photos():
    model, _ = load_model(COMPACT_NAME, seed=0)
    proc = make_processor(model, 0, 0)
    wide = Image.new("RGB", (900, 300), (200, 10, 10))
    out = proc([wide, wide.convert("L")])
    assert out["pixel_values"].shape == (2, 3, 384, 384)
    assert out["image_grid_thw"].tolist() == [[1, 1, model.config.n_visual_tokens]] * 2
    # the whole frame is kept (no crop): the red photo stays red at the borders after the resize
    assert out["pixel_values"][0, 0, :, :8].mean() > out["pixel_values"][0, 1, :, :8].mean()
