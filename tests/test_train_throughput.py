"""The trainer's throughput options on the tiny Qwen2.5-VL: each gives the plain path's numbers.

The plain path is what the trainer did before these options existed: the model's own forward
(`Qwen2_5_VLModel.forward`, vision tower under autograd, padded batch) and the losses on its
hidden states. Against it: the frozen vision tower without autograd and with a per-item cache,
padding-free packing (SDPA's block-diagonal mask here; flash-attention varlen on GPUs), fused AdamW,
the prefetching encoder thread and length-grouped batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from media_factory import write_image, write_mp4
from qualitune.training import (
    Objective,
    Phase,
    TrainSettings,
    build_phases,
    build_schedule,
    encode_examples,
    example_lengths,
    fingerprint,
    train,
)
from qualitune.vlm import forward as fwd
from qualitune.vlm.forward import VisionCache, decoder_hidden, resolve_packing, vision_is_frozen
from qualitune.vlm.inputs import make_image_processor
from qualitune.vlm.losses import LossConfig, answer_losses, combine, supervised_labels
from qualitune.vlm.model import TINY_NAME, load_model
from qualitune.vlm.trainable import LoraSettings, apply_tuning
from qualitune.vlm.unwrap import unwrap_model
from vlm_factory import TOY_RECIPE, training_frame

PROC = make_image_processor(56 * 56, 84 * 84)
MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> pd.DataFrame:
    """Images of three sizes and two clips (shown as 2 frames): rows of different lengths."""
    root = Path(tmp_path_factory.mktemp("mixed"))
    rows = []
    for i, size in enumerate([(64, 72), (84, 84), (56, 56), (72, 64)]):
        rows.append({"path": str(write_image(root / f"img{i}.png", seed=i, size=size)), "media": "image"})
    for i in range(2):
        rows.append(
            {
                "path": str(write_mp4(root / f"clip{i}.mp4", n_frames=6, size=(64, 48), seed=i)),
                "media": "video",
            }
        )
    for i, r in enumerate(rows):
        r.update(item_id=f"m{i}", mos_norm=1.0 + 4.0 * i / (len(rows) - 1), split="train")
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    return training_frame(tmp_path_factory.mktemp("tp_train"))


def _batch(df: pd.DataFrame, tok, n_frames: int = 2) -> dict:
    (phase,) = build_phases(df, TrainSettings())
    return encode_examples(
        phase.examples, tokenizer=tok, image_processor=PROC, n_frames=n_frames, video_mode="frames"
    )


def _model(tuning: str = "lora"):
    model, tok = load_model(TINY_NAME)
    torch.manual_seed(0)
    model = apply_tuning(model, tuning, LoraSettings(r=8, alpha=16, dropout=0.0))
    with torch.no_grad():  # LoRA B starts at zero; make the adapters part of the forward
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return model, tok


def _plain_loss(model, batch) -> torch.Tensor:
    """The trainer's loss the way it was computed before: the model's own forward, padded."""
    base = unwrap_model(model)
    hidden = base.model(**{k: batch[k] for k in MODEL_KEYS}, use_cache=False).last_hidden_state
    labels = supervised_labels(batch["labels"], batch["value_mask"], "value")
    cfg = LossConfig()
    losses = answer_losses(
        hidden,
        base.lm_head,
        labels,
        focal_rows=batch["focal_rows"],
        cfg=cfg,
        level_rows=batch["level_rows"],
        value_start=batch["value_start"],
    )
    return combine(losses, batch["weights"], batch["level_rows"], cfg)


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_mixed_batch_is_padded_and_holds_images_and_frames(mixed):
    _, tok = load_model(TINY_NAME)
    batch = _batch(mixed, tok)
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # padding the packed path removes
    assert fwd.vision_blocks_per_row(batch["mm_token_type_ids"], 1) == [1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("cached", [False, True])
def test_decoder_hidden_matches_the_model_forward(mixed, pack, cached):
    model, tok = _model()
    batch = _batch(mixed, tok)
    reference = (
        unwrap_model(model).model(**{k: batch[k] for k in MODEL_KEYS}, use_cache=False).last_hidden_state
    )
    cache = VisionCache() if cached else None
    for _ in range(2 if cached else 1):  # cached: the second pass reads every item from the cache
        hidden = decoder_hidden(model, batch, pack=pack, cache=cache)
    real = batch["attention_mask"].bool()
    assert torch.allclose(hidden[real], reference[real], atol=1e-5), (
        (hidden[real] - reference[real]).abs().max()
    )
    if not pack:  # without the shared-prompt-prefix shortcut: same operations, same order
        exact = decoder_hidden(model, batch, pack=False, share_prefix=False)
        assert torch.equal(exact[real], reference[real])
    if cached:
        assert (cache.misses, cache.hits, len(cache)) == (6, 6, 6)


@pytest.mark.parametrize("pack", [False, True])
def test_optimised_objective_gives_the_plain_loss_and_gradients(mixed, pack):
    model, tok = _model()
    batch = _batch(mixed, tok)
    plain_loss = _plain_loss(model, batch)
    plain = _grads(model, plain_loss)
    objective = Objective(model, LossConfig(), None, pack=pack, vision_cache=VisionCache())
    objective(batch)  # fills the cache: the timed epochs of a run read it
    loss, _ = objective(batch)
    fast = _grads(model, loss)
    assert abs(float(loss.detach()) - float(plain_loss.detach())) < 1e-5 * abs(float(plain_loss.detach()))
    assert plain.keys() == fast.keys() and all("lora_" in n for n in plain)
    for name in plain:
        assert torch.allclose(fast[name], plain[name], rtol=1e-4, atol=1e-6), name
    assert any(float(g.abs().sum()) > 0 for n, g in fast.items() if "lora_A" in n)


def test_a_trainable_vision_tower_keeps_its_gradients(mixed):
    model, tok = _model("full")
    assert not vision_is_frozen(model)
    batch = _batch(mixed, tok)
    plain = _grads(model, _plain_loss(model, batch))
    loss, _ = Objective(model, LossConfig(), None, pack=True)(batch)
    fast = _grads(model, loss)
    vision = [n for n in plain if n.startswith("model.visual.")]
    assert vision and all(float(plain[n].abs().sum()) > 0 for n in vision if "merger" in n)
    for name in plain:
        assert torch.allclose(fast[name], plain[name], rtol=1e-3, atol=1e-6), name


def test_the_cache_skips_the_vision_tower_for_items_it_has_seen(mixed):
    model, tok = _model()
    batch = _batch(mixed, tok)
    calls = []
    unwrap_model(model).model.visual.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    cache = VisionCache()
    decoder_hidden(model, batch, cache=cache)
    assert len(calls) == 1 and calls[0] == int(batch["pixel_values"].shape[0])
    decoder_hidden(model, batch, cache=cache)
    assert len(calls) == 1  # every item came from the cache
    assert cache.nbytes > 0


def test_cache_vision_refuses_a_trainable_tower(frame):
    model, tok = load_model(TINY_NAME)
    with pytest.raises(ValueError, match="cache_vision"):
        train(model, tok, PROC, frame, TrainSettings(tuning="full", cache_vision=True, epochs=1), n_frames=1)


def test_packing_auto_follows_the_attention_kernel(monkeypatch):
    model, _ = load_model(TINY_NAME)
    assert fwd.attention_implementation(model) == "sdpa"
    assert resolve_packing("auto", model) is False  # SDPA would need an O(N^2) block mask
    assert resolve_packing(True, model) is True and resolve_packing(False, model) is False
    monkeypatch.setattr(fwd, "attention_implementation", lambda m: "flash_attention_2")
    assert fwd.supports_varlen(model) and resolve_packing("auto", model) is True
    with pytest.raises(ValueError, match="packing"):
        resolve_packing("yes", model)
    with pytest.raises(ValueError, match="train.packing"):
        TrainSettings(packing="yes")


def test_example_lengths_are_the_encoded_lengths(mixed):
    _, tok = load_model(TINY_NAME)
    (phase,) = build_phases(mixed, TrainSettings())
    for mode in ("frames", "video"):
        estimated = example_lengths(
            phase.examples, tokenizer=tok, image_processor=PROC, n_frames=2, video_mode=mode
        )
        real = [
            int(
                encode_examples([e], tokenizer=tok, image_processor=PROC, n_frames=2, video_mode=mode)[
                    "attention_mask"
                ].sum()
            )
            for e in phase.examples
        ]
        assert estimated == real, mode


def test_length_grouping_keeps_every_example_once_and_cuts_padding():
    rng = np.random.default_rng(0)
    n, batch = 203, 8
    lengths = rng.choice([300, 560], size=n).tolist()  # one image or two frames
    phases = [Phase("score", [None] * n, 2.0)]
    plain = build_schedule(phases, batch, seed=3)
    grouped = build_schedule(phases, batch, seed=3, lengths=[lengths])
    assert grouped == build_schedule(phases, batch, seed=3, lengths=[lengths])  # deterministic
    for e in range(2):
        rows = [r for s in grouped if s.epoch == e for r in s.rows]
        assert sorted(rows) == list(range(n))
        sizes = [len(s.rows) for s in grouped if s.epoch == e]
        assert all(x == batch for x in sizes[:-1]) and sizes[-1] == n % batch

    def padded(schedule):  # tokens a padded batch computes
        return sum(len(s.rows) * max(lengths[r] for r in s.rows) for s in schedule)

    assert padded(grouped) < 0.85 * padded(plain)
    assert padded(grouped) == pytest.approx(sum(lengths) * 2, rel=0.02)


def test_speed_options_train_to_the_same_weights(frame):
    """Packing, the vision cache, fused AdamW and prefetching together: the weights after two
    epochs match the plain run's; length grouping changes the batches, so it gets its own
    fingerprint (a checkpoint of one never resumes the other)."""
    base = {**TOY_RECIPE, "tuning": "lora", "epochs": 2, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0}
    base["lora"] = LoraSettings(r=8, alpha=16, dropout=0.0)
    off = TrainSettings(**base, packing=False, cache_vision=False, fused_optimizer=False, prefetch=False)
    on = TrainSettings(**base, packing=True, cache_vision=True, fused_optimizer=True, prefetch=True)
    results = []
    for settings in (off, on):
        model, tok = load_model(TINY_NAME)
        results.append(train(model, tok, PROC, frame, settings, n_frames=1))
    a, b = (dict(r.model.named_parameters()) for r in results)
    trained = [n for n, p in a.items() if p.requires_grad]
    assert trained and all(torch.allclose(a[n], b[n], atol=1e-5) for n in trained)
    assert any(float(a[n].abs().sum()) > 0 for n in trained if "lora_B" in n)
    la, lb = ([h["loss"] for h in r.history] for r in results)
    assert np.allclose(la, lb, rtol=1e-4)

    phases = build_phases(frame, off)
    assert fingerprint(off, phases) == fingerprint(on, phases) == fingerprint(TrainSettings(**base), phases)
    grouped = TrainSettings(**base, group_by_length=True)
    assert fingerprint(grouped, phases) != fingerprint(off, phases)
    model, tok = load_model(TINY_NAME)
    result = train(model, tok, PROC, frame, grouped, n_frames=1)
    assert result.optimizer_steps == 8 and np.isfinite([h["loss"] for h in result.history]).all()


@pytest.mark.slow
def test_the_benchmark_runs_both_trainers_on_the_same_loss(tmp_path):
    """benchmarks/train_throughput.py end to end at toy size: both runs time every step after the
    warm-up, and the first batch's loss agrees between our objective and the model's own loss."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "report.json"
    argv = ["--device", "cpu", "--size", "56", "--n-items", "8", "--batch-size", "4", "--lora-r", "4"]
    assert bench.main([*argv, "--warmup-steps", "1", "--threads", "1", "--ablation", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["loss_check_first_batch"]["abs_diff"] < 1e-4
    for run in ("ours", "ours_options_off", "baseline"):
        assert report[run]["steps"] == 3 and report[run]["samples_per_s"] > 0 and report[run]["mfu"] > 0
    assert report["speedup_samples_per_s"] > 0


def test_a_shared_prompt_prefix_runs_once_with_the_same_hidden_states_and_gradients(frame):
    model, tok = _model()
    phases = build_phases(frame, TrainSettings(method="two_stage"))  # stage 2: text only, one question
    batch = encode_examples(
        phases[1].examples[:6], tokenizer=tok, image_processor=PROC, n_frames=1, video_mode="frames"
    )
    n = fwd.training_prefix_length(batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"])
    assert n >= fwd.MIN_SHARED_PREFIX
    real = batch["attention_mask"].bool()
    reference = decoder_hidden(model, batch, share_prefix=False)
    plain = _grads(model, (reference[real] ** 2).mean())
    shared = decoder_hidden(model, batch)
    fast = _grads(model, (shared[real] ** 2).mean())
    assert torch.allclose(shared[real], reference[real], atol=1e-5), (
        (shared[real] - reference[real]).abs().max()
    )
    assert any("lora_A" in k and float(v.abs().sum()) > 0 for k, v in fast.items())
    for name in plain:
        assert torch.allclose(fast[name], plain[name], rtol=1e-4, atol=1e-6), name
    one_row = {k: v[:1] if isinstance(v, torch.Tensor) else v[:1] for k, v in batch.items()}
    assert (
        fwd.training_prefix_length(
            one_row["input_ids"], one_row["attention_mask"], one_row["mm_token_type_ids"]
        )
        == 0
    )
