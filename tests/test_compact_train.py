"""The compact backend through the project's own trainer, scorer folder, pyfunc and server."""

from __future__ import annotations

import base64

import pandas as pd
import pytest
import torch
from PIL import Image

from qualitune.scorer import Scorer, ScorerSpec, save_scorer
from qualitune.training import TrainSettings, VitalSettings, train
from qualitune.vlm.backends.compact.modeling import is_compact
from qualitune.vlm.model import COMPACT_NAME, load_model, make_processor
from qualitune.vlm.trainable import LoraSettings, part_of, transfer_vision, vision_weights
from qualitune.vlm.unwrap import unwrap_model
from vlm_factory import TOY_RECIPE, training_frame


def _settings(**kw) -> TrainSettings:
    base = dict(
        TOY_RECIPE,
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
    return {n: p.detach().clone() for n, p in unwrap_model(model).named_parameters()}


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
    # 8 photos of training leave most answer probability off-format: score every item anyway
    spec = ScorerSpec(base_model=COMPACT_NAME, answer_format=_settings().fmt.to_dict(), max_invalid_mass=1.0)
    out = save_scorer(result.model, spec, tmp_path_factory.mktemp("compact_scorer") / "scorer")
    return {"model": result.model, "tok": tok, "spec": spec, "dir": out, "before": before, "result": result}


def test_iovqa_warmup_trains_projector_and_lora_only(trained):
    model = trained["model"]
    assert is_compact(model)
    after = {n: p.detach() for n, p in unwrap_model(model).named_parameters()}
    merger = unwrap_model(model).model.visual.merger
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
    after = {n: p.detach() for n, p in unwrap_model(result.model).named_parameters()}
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
    spec = ScorerSpec(
        base_model=COMPACT_NAME, answer_format=_settings().fmt.to_dict(), two_stage=True, max_invalid_mass=1.0
    )
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


def test_loading_merges_the_adapter_without_changing_scores(trained, frame):
    from qualitune.scorer import load_scored_model

    paths = frame["path"].tolist()[:4]
    merged = Scorer.load(trained["dir"])
    assert not any("lora" in n for n, _ in merged.model.named_parameters())  # folded into the weights
    model, tok, spec = load_scored_model(trained["dir"])
    assert any("lora_B" in n for n, _ in model.named_parameters())  # the plain load keeps the adapter
    unmerged = Scorer(model, tok, spec)
    a = [r["score"] for r in merged.score_paths(paths).results]
    b = [r["score"] for r in unmerged.score_paths(paths).results]
    assert a == pytest.approx(b, abs=1e-3)  # fp32 rounding of W + BA vs W x + B(A x), 30 layers


def test_bfloat16_load_is_honoured_and_scores_stay_on_the_scale(trained, frame):
    paths = frame["path"].tolist()
    fp32 = Scorer.load(trained["dir"])
    bf16 = Scorer.load(trained["dir"], dtype="bfloat16")
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    a = [r["score"] for r in fp32.score_paths(paths, batch_size=4).results]
    b = [r["score"] for r in bf16.score_paths(paths, batch_size=4).results]
    assert all(x is not None and 10 <= x <= 50 for x in b)
    # bf16 keeps ~3 significant digits: scores move (this barely trained model's by up to ~6 points,
    # the BIQ2021 scorer's by 0.3 on average), but a broken cast would scatter them across the scale
    assert sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a) < 3.0
    visual = unwrap_model(bf16.model).model.visual
    pixels = torch.rand(1, 3, 8, 8)
    assert visual.pixel_keys(pixels) != visual.pixel_keys(pixels.bfloat16())  # dtype is part of the key
    assert visual.pixel_keys(pixels) == visual.pixel_keys(pixels.clone())


def test_streamed_scoring_skips_bad_files_without_moving_other_scores(trained, frame, tmp_path):
    good = frame["path"].tolist()[:6]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    missing = tmp_path / "missing.png"
    mixed = [good[0], str(broken), good[1], good[2], str(missing), good[3], good[4], good[5]]
    scorer = Scorer.load(trained["dir"])
    run = scorer.score_paths(mixed, batch_size=3)
    assert [r["path"] for r in run.results] == mixed
    assert run.n_media_errors == 2
    assert run.results[1]["score"] is None and "broken.jpg" in run.results[1]["error"]
    assert run.results[4]["score"] is None and "missing.png" in run.results[4]["error"]
    clean = scorer.score_paths(good, batch_size=3).results  # the same batches of readable files
    got = [r["score"] for r in run.results if r["score"] is not None]
    assert got == [r["score"] for r in clean]


def test_score_photos_benchmark_compares_runtimes_on_the_same_scores(
    trained, frame, tmp_path, capsys, monkeypatch
):
    import json
    import sys
    from pathlib import Path

    from qualitune.vlm.backends.compact.encoder_runtime import RUNTIME_ENV

    monkeypatch.setenv(RUNTIME_ENV, "auto")  # the benchmark switches it per configuration; restored after

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import score_photos

    folder = Path(frame["path"].iloc[0]).parent
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"image_name": [Path(p).name for p in frame["path"]], "mos": frame["mos"]}).to_csv(
        labels, index=False
    )
    argv = ["--model", str(trained["dir"]), "--images", str(folder), "--n", "5", "--batch-size", "2"]
    argv += ["--repeats", "1", "--config", "fp32-torchscript", "--config", "fp32-onnxruntime"]
    assert score_photos.main([*argv, "--labels", str(labels)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["config"] for r in rows] == ["fp32-torchscript", "fp32-onnxruntime"]
    assert all(r["failed"] == 0 and r["images_per_s"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["vs_first"]["max_abs_diff"] < 1e-2  # the two runtimes compute the same fp32 features
    assert -1.0 <= rows[1]["vs_mos"]["srcc"] <= 1.0
    assert score_photos.main([*argv[:4], "--n", "50"]) == 2  # too few photos: a clear refusal


def test_loaded_scorer_bounds_its_feature_cache(trained, frame, monkeypatch):
    paths = frame["path"].tolist()[:4]
    visual = unwrap_model(Scorer.load(trained["dir"]).model).model.visual
    assert visual.max_cached == 1024  # a server must not keep every photo it ever saw
    monkeypatch.setenv("QUALITUNE_SCORER_FEATURE_CACHE", "2")
    scorer = Scorer.load(trained["dir"])
    visual = unwrap_model(scorer.model).model.visual
    first = [r["score"] for r in scorer.score_paths(paths, batch_size=4).results]
    assert len(visual._cache) == 2  # the two photos stored last
    again = [r["score"] for r in scorer.score_paths(paths, batch_size=4).results]
    assert again == pytest.approx(first, abs=1e-6)  # evicted photos are simply recomputed
    # the training model keeps its large cache: only loading for inference bounds it
    assert unwrap_model(trained["model"]).model.visual.max_cached > 1024
