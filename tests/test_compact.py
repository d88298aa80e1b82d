"""The compact backend: real pretrained parts, Qwen2.5-VL's interfaces, exact scoring, the caches."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from qualitune.vlm.backends.compact import CompactImageProcessor, CompactVLM, is_compact
from qualitune.vlm.backends.compact.efficientnet import INPUT_MEAN, INPUT_STD, load_efficientnet_lite0
from qualitune.vlm.inputs import encode_batch, model_inputs
from qualitune.vlm.model import COMPACT_NAME, load_model, make_processor
from qualitune.vlm.scoring import expected_scores, greedy_scores, integer_distribution
from qualitune.vlm.trainable import LoraSettings, apply_tuning, part_of

Q = "Rate the quality from 10 to 50. Answer with an integer only."


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


@pytest.fixture(scope="module")
def compact():
    return load_model(COMPACT_NAME, seed=0)


@pytest.fixture(scope="module")
def photos():
    return [_photo(n) for n in ("chelsea", "coffee", "astronaut", "rocket")]


def test_efficientnet_weights_recognise_imagenet_classes():
    """The ported forward + shipped weights are right: a cat is a cat, a cup of coffee espresso."""
    net = load_efficientnet_lite0()
    top = {}
    for name in ("chelsea", "coffee"):
        im = _photo(name).resize((224, 224), Image.BICUBIC)
        x = (
            torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 255 - INPUT_MEAN
        ) / INPUT_STD
        with torch.no_grad():
            top[name] = int(net(x[None]).argmax())
    assert 281 <= top["chelsea"] <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top["coffee"] == 967  # espresso


def test_compact_model_has_qwen_parts_and_prompt(compact, photos):
    model, tok = compact
    assert is_compact(model) and isinstance(model, CompactVLM)
    parts = {part_of(n) for n, _ in model.named_parameters()}
    assert parts == {"vision", "projector", "decoder"}
    assert all(part_of(n) == "projector" for n, _ in model.named_parameters() if ".merger." in n)
    proc = make_processor(model, 0, 0)
    assert isinstance(proc, CompactImageProcessor)
    batch = encode_batch(photos[:2], Q, tokenizer=tok, image_processor=proc)
    n_img = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert n_img == 2 * model.config.n_visual_tokens
    assert batch["pixel_values"].shape == (2, 3, 384, 384)
    text = tok.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert "<|vision_start|>" in text and text.endswith("<|im_start|>assistant\n")
    assert "system" not in text  # no default system turn: every token costs on a CPU


def test_fast_encoder_path_and_cache_match_eager(compact, photos):
    model, tok = compact
    visual = model.model.visual
    proc = make_processor(model, 0, 0)
    pixels = torch.from_numpy(proc(photos[:3])["pixel_values"])
    with torch.no_grad():
        eager_g, eager_m = visual._features(pixels)
    visual.invalidate()
    with torch.no_grad():  # inference: the traced encoder and the cache (training freezes it instead)
        g1, m1 = visual.features(pixels)
    assert torch.allclose(g1, eager_g, atol=1e-3, rtol=1e-3) and torch.allclose(
        m1, eager_m, atol=1e-3, rtol=1e-3
    )
    assert len(visual._cache) == 3
    calls = []
    original = visual._fast
    visual._fast = lambda x: calls.append(len(x)) or original(x)
    try:
        visual.encoder.requires_grad_(False)  # a frozen encoder takes the fast path with autograd on
        g2, _ = visual.features(pixels[[2, 0]])  # both cached: the encoder does not run
        assert calls == [] and torch.equal(g2, g1[[2, 0]])
        with torch.no_grad():  # any weight change voids the cache
            visual.encoder._conv_stem.weight.mul_(1.0)
        visual.features(pixels[:1])
        assert calls == [1] and len(visual._cache) == 1
    finally:
        visual._fast = original
        visual.encoder.requires_grad_(True)
        visual.invalidate()


@pytest.mark.parametrize("runtime", ["onnxruntime", "torchscript"])
def test_both_encoder_runtimes_match_eager(compact, photos, runtime, monkeypatch):
    from qualitune.vlm.backends.compact.encoder_runtime import RUNTIME_ENV, OrtEncoder

    monkeypatch.setenv(RUNTIME_ENV, runtime)
    model, _ = compact
    visual = model.model.visual
    pixels = torch.from_numpy(make_processor(model, 0, 0)(photos)["pixel_values"])
    with torch.no_grad():
        eager = visual._features(pixels)
    visual.invalidate()
    try:
        fast = visual._fast(pixels)
        (built,) = visual._traced.values()
        assert isinstance(built, OrtEncoder) == (runtime == "onnxruntime")
    finally:
        visual.invalidate()
    for got, want in zip(fast, eager, strict=True):
        assert float((got - want).norm() / want.norm()) < 1e-4


def test_onnx_export_is_cached_per_weights_and_falls_back_with_a_reason(tmp_path, monkeypatch, caplog):
    import qualitune.vlm.backends.compact.encoder_runtime as ort_mod
    from qualitune.vlm.backends.compact.configuration import CompactConfig
    from qualitune.vlm.backends.compact.modeling import CompactVisual

    monkeypatch.setenv("QUALITUNE_CACHE", str(tmp_path))
    monkeypatch.setenv(ort_mod.RUNTIME_ENV, "auto")
    visual = CompactVisual(CompactConfig(image_size=64), embed_rms=1.0, hidden_size=32)
    x = torch.randn(2, 3, 64, 64)
    first = visual._fast(x)
    files = sorted((tmp_path / "onnx").glob("*.onnx"))
    assert len(files) == 1 and "3x64x64" in files[0].name

    def no_export(*a, **k):
        raise AssertionError("exported again although the cached graph fits")

    monkeypatch.setattr(ort_mod, "export_onnx", no_export)
    visual.invalidate()
    assert all(torch.equal(a, b) for a, b in zip(visual._fast(x), first, strict=True))  # read from the cache
    monkeypatch.undo()
    monkeypatch.setenv("QUALITUNE_CACHE", str(tmp_path))
    with torch.no_grad():  # new weights: a new digest, a second file, and features that follow them
        visual.encoder._conv_stem.weight.mul_(0.5)
    visual.invalidate()
    moved = visual._fast(x)
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2
    assert not torch.allclose(moved[0], first[0])
    with torch.no_grad():
        eager = visual._features(x)
    assert float((moved[0] - eager[0]).norm() / eager[0].norm()) < 1e-4

    monkeypatch.setattr(ort_mod, "onnxruntime_available", lambda: False)
    visual.invalidate()
    visual._fast(x)
    assert isinstance(next(iter(visual._traced.values())), torch.jit.ScriptModule)  # TorchScript instead
    monkeypatch.setenv(ort_mod.RUNTIME_ENV, "onnxruntime")
    visual.invalidate()
    with pytest.raises(RuntimeError, match="onnxruntime is not installed"):
        visual._fast(x)
    monkeypatch.setenv(ort_mod.RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match="auto, onnxruntime, torchscript"):
        visual._fast(x)

    monkeypatch.setenv(ort_mod.RUNTIME_ENV, "auto")
    monkeypatch.setattr(ort_mod, "onnxruntime_available", lambda: True)

    class Broken(ort_mod.OrtEncoder):
        def __init__(self, *a, **k):
            raise RuntimeError("exporter exploded")

    monkeypatch.setattr(ort_mod, "OrtEncoder", Broken)
    visual.invalidate()
    with caplog.at_level("WARNING", logger="qualitune.vlm.backends.compact.encoder_runtime"):
        visual._fast(x)
    assert "exporter exploded" in caplog.text and "TorchScript" in caplog.text


def test_expected_scores_match_teacher_forcing(compact, photos):
    """Tree-attention scoring through SmolLM2 equals full forwards over prompt + answer digits."""
    model, tok = compact
    proc = make_processor(model, 0, 0)
    items = photos[:2]
    batch = encode_batch(items, Q, tokenizer=tok, image_processor=proc)
    probs, _ = integer_distribution(model, tok, batch, 10, 50)
    for k in (10, 23, 50):
        full = encode_batch(
            items,
            Q,
            [str(k)] * 2,
            tokenizer=tok,
            image_processor=proc,
            answer_suffix="<|im_end|>",
            padding_side="right",
        )
        with torch.no_grad():
            logits = model(**model_inputs(model, {a: b for a, b in full.items() if a != "labels"})).logits
        logp = torch.log_softmax(logits.double(), dim=-1)
        for row in range(2):
            n = int(full["attention_mask"][row].sum())
            ids = full["input_ids"][row, n - 3 : n - 1].tolist()  # the two digits (no answer extends them)
            total = sum(float(logp[row, n - 4 + j, t]) for j, t in enumerate(ids))
            assert probs[row, k - 10].item() == pytest.approx(np.exp(total), rel=2e-3)


def test_scores_are_batch_invariant(compact, photos):
    model, tok = compact
    proc = make_processor(model, 0, 0)
    batch = encode_batch(photos, Q, tokenizer=tok, image_processor=proc)
    many = expected_scores(model, tok, batch, 10, 50, max_invalid_mass=1.0)  # an untrained projector
    assert all(m.score is not None for m in many)
    greedy = greedy_scores(model, tok, batch, 10, 50)
    for i, im in enumerate(photos):
        one = encode_batch([im], Q, tokenizer=tok, image_processor=proc)
        assert expected_scores(model, tok, one, 10, 50, max_invalid_mass=1.0)[0].score == pytest.approx(
            many[i].score, abs=1e-3
        )
        assert greedy_scores(model, tok, one, 10, 50)[0].answer == greedy[i].answer


def test_tuning_modes_pick_the_right_parts():
    model, _ = load_model(COMPACT_NAME, seed=1)
    enc = apply_tuning(model, "encoder")
    trainable = {part_of(n) for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"vision"}
    model, _ = load_model(COMPACT_NAME, seed=1)
    warm = apply_tuning(model, "warmup", LoraSettings(r=4, alpha=8))
    names = [n for n, p in warm.named_parameters() if p.requires_grad]
    assert any(".merger." in n for n in names) and any("lora_" in n for n in names)
    assert not any(part_of(n) == "vision" for n in names)
    assert all("language_model" in n for n in names if "lora_" in n)


def test_videos_as_a_grid_are_refused_with_a_hint(compact, photos):
    model, tok = compact
    proc = make_processor(model, 0, 0)
    batch = encode_batch([photos[:2]], Q, tokenizer=tok, image_processor=proc, video_mode="frames")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 2 * model.config.n_visual_tokens
    with pytest.raises(ValueError, match="video_mode: frames"):
        model(input_ids=batch["input_ids"], pixel_values_videos=torch.zeros(1, 3))


def test_shared_question_prefix_is_computed_once_with_the_same_scores(compact, photos):
    """The compact template puts the question first; scoring computes that prefix for one row and
    repeats its cache. Scores equal the plain per-row forward."""
    from qualitune.vlm.scoring import _prefix_forward, shared_prefix_length

    model, tok = compact
    proc = make_processor(model, 0, 0)
    batch = encode_batch(photos, Q, tokenizer=tok, image_processor=proc)
    inputs = model_inputs(model, batch)
    n = shared_prefix_length(inputs)
    first_image = int((batch["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    assert n == first_image  # the question and <|vision_start|>: the same ids in every row
    assert n > 20
    with torch.no_grad():
        shared, *_ = _prefix_forward(model, batch, share_prefix=True)
        plain, *_ = _prefix_forward(model, batch, share_prefix=False)
    assert torch.allclose(shared, plain, atol=2e-4)
    one = encode_batch(photos[:1], Q, tokenizer=tok, image_processor=proc)
    assert shared_prefix_length(model_inputs(model, one)) == 0  # one row: nothing to share


def test_training_forward_shares_the_question_prefix_with_the_same_gradients(photos):
    """Training runs the shared question once per batch too: same hidden states, same LoRA and
    projector gradients as the per-row forward."""
    from qualitune.vlm.forward import decoder_hidden, training_prefix_length

    model, tok = load_model(COMPACT_NAME, seed=0)
    model = apply_tuning(
        model, "warmup", LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    # float64: in fp32 the two summation orders once differed by 3.4e-3 on the merger's scalar `scale`
    # (a sum with cancellation) and failed the test; in float64 the worst gradient differs by ~4e-7
    model.double()
    proc = make_processor(model, 0, 0)
    batch = encode_batch(
        photos, Q, ["35", "20", "41", "12"], tokenizer=tok, image_processor=proc, padding_side="right"
    )
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    assert (
        training_prefix_length(batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]) > 20
    )

    def grads(share: bool):
        model.zero_grad(set_to_none=True)
        hidden = decoder_hidden(model, batch, share_prefix=share)
        (hidden[:, -3:] ** 2).mean().backward()
        return hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    h_plain, g_plain = grads(False)
    h_shared, g_shared = grads(True)
    assert torch.allclose(h_shared, h_plain, atol=1e-4), (h_shared - h_plain).abs().max()
    assert g_plain.keys() == g_shared.keys() and any("merger" in n for n in g_plain)
    for n in g_plain:  # sums in another order: compare each gradient as a whole
        rel = float((g_shared[n] - g_plain[n]).norm() / g_plain[n].norm().clamp(min=1e-12))
        assert rel < 1e-3, (n, rel)


def test_logit_lens_and_attention_read_every_decoder_layer(tmp_path, photos):
    from qualitune import analysis
    from qualitune.scorer import Scorer, ScorerSpec

    model, tok = load_model(COMPACT_NAME, seed=0)
    scorer = Scorer(
        model, tok, ScorerSpec(base_model=COMPACT_NAME, answer_format={"kind": "integer", "lo": 10, "hi": 50})
    )
    paths = []
    for i, im in enumerate(photos[:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        im.resize((96, 96)).save(paths[-1])
    lens = analysis.logit_lens(scorer, paths, top_k=3)
    n_layers = len(model.model.language_model.layers)
    assert lens["layer"].nunique() == n_layers + 1 and lens["rank"].max() == 3
    att = analysis.attention_shares(scorer, paths)
    assert att["layer"].nunique() == n_layers
    assert ((att.groupby("layer")["share"].sum() - 1).abs() < 1e-4).all()


def test_feature_store_serves_a_new_process_and_follows_the_weights(compact, photos, tmp_path):
    """Features stored on disk are read back exactly by a model that has never computed them, a
    damaged entry is recomputed, and other encoder weights use another folder (no stale features)."""
    from qualitune.vlm.feature_store import attach_feature_store

    model, _ = compact
    visual = model.model.visual
    pixels = torch.from_numpy(make_processor(model, 0, 0)(photos[:2])["pixel_values"])
    assert attach_feature_store(model, tmp_path / "feats")
    try:
        visual.invalidate()
        with torch.no_grad():
            g1, m1 = visual.features(pixels)
        assert visual._store.writes == 2
        files = sorted((tmp_path / "feats").rglob("*.pt"))
        assert len(files) == 2
        visual.invalidate()  # a fresh process: nothing in memory, the store on disk
        visual._fast = None  # the encoder must not run again
        with torch.no_grad():
            g2, m2 = visual.features(pixels)
        assert visual._store.hits == 2 and torch.equal(g1, g2) and torch.equal(m1, m2)
        del visual._fast
        files[0].write_bytes(b"truncated")
        visual.invalidate()
        with torch.no_grad():
            g3, _ = visual.features(pixels)
        assert visual._store.hits == 1 and visual._store.writes == 1
        assert torch.allclose(g3, g1, atol=1e-5)
        stem = visual.encoder._conv_stem.weight
        saved = stem.detach().clone()
        with torch.no_grad():
            stem.mul_(1.5)  # other weights: another digest, another folder
        try:
            with torch.no_grad():
                visual.features(pixels)
            assert len({p.parent.parent for p in (tmp_path / "feats").rglob("*.pt")}) == 2
        finally:
            with torch.no_grad():
                stem.copy_(saved)
            visual.invalidate()
    finally:
        attach_feature_store(model, None)
