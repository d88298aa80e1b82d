"""The trainer on the tiny Qwen2.5-VL: masks, losses, which weights move, recipes, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qualitune.training import (
    TrainSettings,
    VitalSettings,
    build_phases,
    build_schedule,
    encode_examples,
    train,
)
from qualitune.vlm.inputs import IGNORE_INDEX, make_image_processor
from qualitune.vlm.losses import LossConfig, answer_losses, focal_cross_entropy, supervised_labels
from qualitune.vlm.model import TINY_NAME, load_model
from qualitune.vlm.tasks import AnswerFormat, compare_examples, score_examples
from qualitune.vlm.trainable import LoraSettings, transfer_vision
from vlm_factory import TOY_RECIPE, training_frame, write_flat_or_noisy

PROC = make_image_processor(56 * 56, 84 * 84)


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    return training_frame(tmp_path_factory.mktemp("train_data"))


def _tiny():
    return load_model(TINY_NAME)


def _run(frame, **kw):
    model, tok = _tiny()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = TrainSettings(
        **{**TOY_RECIPE, "epochs": 2, "batch_size": 4, "lr": 5e-3, "warmup_ratio": 0.0, **kw}
    )
    result = train(model, tok, PROC, frame, settings, n_frames=1)
    return base, result, tok


def _changed(base: dict, model: torch.nn.Module) -> set[str]:
    """Names (bare-model names) whose weights differ from `base`, LoRA tensors reported as 'lora'."""
    out = set()
    for name, p in model.named_parameters():
        if "lora_" in name:
            if "lora_B" in name and p.detach().abs().sum() > 0:  # B starts at zero
                out.add("lora")
            continue
        bare = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if not torch.equal(base[bare], p.detach()):
            out.add(bare)
    return out


def test_integer_only_mask_keeps_exactly_the_integer_tokens(frame):
    _, tok = _tiny()
    fmt = AnswerFormat("integer", 10, 50)
    ex = score_examples(frame.iloc[[3, 12]], fmt)
    batch = encode_examples(ex, tokenizer=tok, image_processor=PROC, n_frames=1, video_mode="frames")
    masked = supervised_labels(batch["labels"], batch["value_mask"], "value")
    for row, e in enumerate(ex):
        kept = masked[row][masked[row] != IGNORE_INDEX].tolist()
        assert tok.decode(kept) == e.answer[1]  # the digits, e.g. "18", nothing else
        assert len(kept) == len(e.answer[1])  # one token per digit (Qwen splits numbers)
    full = supervised_labels(batch["labels"], batch["value_mask"], "answer")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert all(im_end in r[r != IGNORE_INDEX].tolist() for r in full)  # the baseline also learns the end


def test_value_mask_gives_zero_gradient_everywhere_else(frame):
    """The proof the issue asks for: no position outside the integer influences the loss."""
    model, tok = _tiny()
    ex = score_examples(frame.iloc[:3], AnswerFormat("integer", 10, 50))
    batch = encode_examples(ex, tokenizer=tok, image_processor=PROC, n_frames=1, video_mode="frames")
    labels = supervised_labels(batch["labels"], batch["value_mask"], "value")
    b, length = labels.shape
    hidden = torch.randn(b, length, model.config.text_config.hidden_size, requires_grad=True)
    losses = answer_losses(
        hidden, model.lm_head, labels, focal_rows=torch.zeros(b, dtype=torch.bool), cfg=LossConfig()
    )
    losses["ce"].sum().backward()
    grad_rows = hidden.grad.abs().sum(-1) > 0  # (B, L): positions whose hidden state matters
    predicts_value = torch.zeros_like(grad_rows)
    predicts_value[:, :-1] = batch["value_mask"][:, 1:]  # position t predicts token t+1
    assert torch.equal(grad_rows, predicts_value)
    assert int(predicts_value.sum()) == sum(len(e.answer[1]) for e in ex)


def test_decimal_baseline_answers_with_a_point():
    fmt = AnswerFormat("decimal")
    assert fmt.values([3.46, 1.0, 5.0]) == ["3.5", "1.0", "5.0"]
    assert fmt.parse("3.5") == 3.5 and fmt.parse("35") is None and fmt.parse("5.1") is None
    assert AnswerFormat("integer", 10, 50).values([3.46]) == ["35"]
    lvl = AnswerFormat("level")
    assert lvl.parse(" good.") == 4.0 and lvl.parse("The quality of the image is bad.") == 1.0


def test_focal_loss_matches_its_formula_and_reduces_to_ce():
    logits = torch.randn(6, 11)
    target = torch.randint(0, 11, (6,))
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(focal_cross_entropy(logits, target, 1.0, 0.0), ce, atol=1e-6)
    p = torch.softmax(logits, -1).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(focal_cross_entropy(logits, target, 0.5, 2.0), 0.5 * (1 - p) ** 2 * ce, atol=1e-6)


def test_compare_pairs_respect_the_margin(frame):
    pairs = compare_examples(frame, margin=1.0, pairs_per_item=2, seed=3)
    means = dict(zip(frame["path"], frame["pmod_mean"], strict=True))
    assert len(pairs) == 2 * len(frame) or len(pairs) > len(frame)
    for e in pairs:
        a, b = (means[p] for p in e.media)
        assert abs(a - b) >= 1.0
        assert e.answer[1] == ("first" if a > b else "second")
    assert {e.answer[1] for e in pairs} == {"first", "second"}


def test_loss_decreases_and_lora_leaves_base_weights_alone(frame):
    base, result, _ = _run(
        frame, tuning="lora", epochs=6, lr=3e-2, lora=LoraSettings(r=8, alpha=16, dropout=0.0)
    )
    losses = [h["loss"] for h in result.history]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5, losses
    assert _changed(base, result.model) == {"lora"}


def test_encoder_centred_mode_changes_only_the_vision_encoder(frame):
    base, result, _ = _run(frame, method="vital", tuning="encoder", epochs=1)
    changed = _changed(base, result.model)
    assert changed and all(n.startswith("model.visual.") and ".merger." not in n for n in changed), changed
    assert result.n_examples["vital"] > len(frame)  # score + compare + describe examples


def test_decoder_warmup_trains_projector_and_lora_only_on_n_samples(frame):
    base, result, _ = _run(
        frame,
        method="vital",
        tuning="warmup",
        max_train_samples=8,
        epochs=1,
        vital=VitalSettings(compare_weight=0),
    )
    changed = _changed(base, result.model)
    assert "lora" in changed
    assert {n for n in changed if n != "lora"} and all(".merger." in n for n in changed if n != "lora")
    assert result.n_examples["vital"] == 16  # 8 samples x (score + describe)


def test_projector_lr_gives_the_projector_its_own_group():
    from qualitune.training import parameter_groups
    from qualitune.vlm.trainable import apply_tuning, part_of

    model, _ = _tiny()
    model = apply_tuning(model, "warmup", LoraSettings())
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    (one,) = parameter_groups(model, TrainSettings(tuning="warmup"))
    assert {id(p) for p in one["params"]} == set(trainable) and "lr" not in one
    rest, proj = parameter_groups(model, TrainSettings(tuning="warmup", lr=1e-4, projector_lr=1e-2))
    assert proj["lr"] == 1e-2 and "lr" not in rest  # rest: the optimizer's default lr
    assert {part_of(trainable[id(p)]) for p in proj["params"]} == {"projector"}
    assert all("lora_" in trainable[id(p)] for p in rest["params"])
    assert len(proj["params"]) + len(rest["params"]) == len(trainable)
    with pytest.raises(ValueError, match="projector_lr must be a positive number"):
        TrainSettings(projector_lr=0)


def test_vital_level_rows_carry_the_kl_to_the_pmod(frame):
    model, tok = _tiny()
    s = TrainSettings(method="vital", vital=VitalSettings(compare_weight=0, describe_weight=0))
    (phase,) = build_phases(frame, s)
    batch = encode_examples(
        phase.examples[:4], tokenizer=tok, image_processor=PROC, n_frames=1, video_mode="frames"
    )
    assert batch["level_rows"].all()
    from qualitune.training import Objective
    from qualitune.vlm.scoring import level_token_ids

    ids = level_token_ids(tok)
    _, parts = Objective(model, LossConfig(), ids)(batch)
    assert (parts["kl"] > 0).all()
    # the value token of each row is one of the five level words, right where value_start points
    vs = batch["value_start"]
    assert set(batch["input_ids"][torch.arange(4), vs].tolist()) <= set(ids)


def test_soft_labels_put_a_kl_on_the_first_digit(frame):
    """train.label_sigma > 0: every MOS example carries a distribution over the first digit that
    peaks at its label's digit, the KL is taken right where that digit is predicted, and it moves
    the loss (sigma 0 leaves the examples and the loss as they were)."""
    from qualitune.training import Objective
    from qualitune.vlm.scoring import first_token_ids

    model, tok = _tiny()
    s = TrainSettings(label_sigma=0.4)
    (phase,) = build_phases(frame, s)
    assert all(e.levels is not None and len(e.levels) == 5 for e in phase.examples)
    for e in phase.examples:
        assert abs(sum(e.levels) - 1) < 1e-9 and int(np.argmax(e.levels)) + 1 == int(e.answer[1][0])
    batch = encode_examples(
        phase.examples[:4], tokenizer=tok, image_processor=PROC, n_frames=1, video_mode="frames"
    )
    ids = first_token_ids(tok, s.fmt)
    vs = batch["value_start"]
    first_digits = batch["input_ids"][torch.arange(4), vs].tolist()
    assert first_digits == [ids[int(e.answer[1][0]) - 1] for e in phase.examples[:4]]
    loss_soft, parts = Objective(model, LossConfig(), ids)(batch)
    assert (parts["kl"] > 0).all()
    (hard,) = build_phases(frame, TrainSettings())
    assert all(e.levels is None for e in hard.examples)
    plain = encode_examples(
        hard.examples[:4], tokenizer=tok, image_processor=PROC, n_frames=1, video_mode="frames"
    )
    loss_hard, parts_hard = Objective(model, LossConfig(), None)(plain)
    assert (parts_hard["kl"] == 0).all() and torch.allclose(parts_hard["ce"], parts["ce"])
    assert float(loss_soft) > float(loss_hard)
    with pytest.raises(ValueError, match="label_sigma"):
        TrainSettings(label_sigma=-1)
    with pytest.raises(ValueError, match="one length"):
        TrainSettings(label_sigma=0.5, label_range=(1, 50))


def test_soft_targets_are_ordinal_distributions_over_first_tokens():
    fmt = AnswerFormat("integer", 10, 50)
    assert [b[0] for b in fmt.first_token_bins()] == ["1", "2", "3", "4", "5"]
    t = fmt.soft_targets([1.0, 2.5, 3.2, 5.0], 0.3)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    assert t[0].argmax() == 0 and t[2].argmax() == 2 and t[3, 3:].sum() > 0.99
    assert t[2, 1] > t[2, 0] and t[2, 3] > t[2, 4]  # the mass falls off with distance
    wide = fmt.soft_targets([3.2], 1.0)[0]
    assert wide.max() < t[2].max()  # a wider sigma, a softer label
    level = AnswerFormat("level").soft_targets([4.0], 0.5)[0]
    # "good" in the middle; "excellent" also takes the tail beyond the scale's end (z > 3: 0.00135)
    assert level.argmax() == 3 and level[4] - level[2] == pytest.approx(0.00135, abs=1e-5)
    with pytest.raises(ValueError, match="> 0"):
        fmt.soft_targets([3.0], 0.0)


def test_transfer_moves_the_vision_encoder_only(frame):
    _, result, _ = _run(frame, method="vital", tuning="encoder", epochs=1)
    target, _ = load_model(TINY_NAME, seed=7)  # "another decoder": other weights, same vision config
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    n = transfer_vision(result.model, target)
    assert n > 0
    src = dict(result.model.named_parameters())
    for name, p in target.named_parameters():
        if name.startswith("model.visual.") and ".merger." not in name:
            assert torch.equal(p, src[name])
        else:
            assert torch.equal(p, before[name]), name
    other = load_model(TINY_NAME)[0]
    other.config.vision_config.depth = 3
    with pytest.raises(ValueError, match="vision configs differ"):
        transfer_vision(result.model, other)


def test_two_stage_has_a_description_phase_then_a_text_only_score_phase(frame):
    phases = build_phases(frame, TrainSettings(method="two_stage", stage1_epochs=1, epochs=2))
    assert [p.name for p in phases] == ["stage1_describe", "stage2_score"]
    assert all(e.media and e.task == "describe" for e in phases[0].examples)
    assert all(not e.media and e.task == "score_text" for e in phases[1].examples)
    assert "strong blur" in phases[1].examples[0].prompt or "sharp" in phases[1].examples[0].prompt
    sched = build_schedule(phases, 4, seed=1)
    assert [s.phase for s in sched] == [0] * 4 + [1] * 8


def test_training_is_deterministic_for_a_seed(frame):
    kw = {"tuning": "lora", "epochs": 1, "lora": LoraSettings(r=4, alpha=8, dropout=0.1)}
    _, a, _ = _run(frame, **kw)
    _, b, _ = _run(frame, **kw)
    _, c, _ = _run(frame, seed=7, **kw)
    wa = {n: p for n, p in a.model.named_parameters() if p.requires_grad}
    wb = dict(b.model.named_parameters())
    wc = dict(c.model.named_parameters())
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert any(not torch.equal(wa[n], wc[n]) for n in wa)


def test_the_pixels_reach_the_answer(tmp_path):
    """Trained on flat vs noisy images (MOS 5 vs 1), unseen images of each kind score apart: the
    answer depends on the image through the vision tower and projector, not on the prompt alone."""
    from qualitune.scorer import Scorer, ScorerSpec

    rng = np.random.default_rng(0)

    def write(kind: str, i: int) -> str:
        return write_flat_or_noisy(tmp_path / f"{kind}{i}.png", kind, rng)

    rows = [
        {"item_id": f"{k}{i}", "path": write(k, i), "media": "image", "mos_norm": 5.0 if k == "flat" else 1.0}
        for i in range(8)
        for k in ("flat", "noisy")
    ]
    model, tok = _tiny()
    settings = TrainSettings(
        **{**TOY_RECIPE, "tuning": "full", "warmup_ratio": 0.0}, epochs=15, batch_size=4, lr=3e-3
    )
    result = train(model, tok, PROC, pd.DataFrame(rows), settings, n_frames=1)
    spec = ScorerSpec(
        base_model=TINY_NAME, answer_format=settings.fmt.to_dict(), max_pixels=84 * 84, max_invalid_mass=1.0
    )
    scorer = Scorer(result.model, tok, spec)
    flat = scorer.score_paths([write("flat", 100 + i) for i in range(4)]).results
    noisy = scorer.score_paths([write("noisy", 100 + i) for i in range(4)]).results
    assert min(r["score"] for r in flat) > max(r["score"] for r in noisy) + 10, (flat, noisy)


def test_two_stage_inference_describes_then_scores_from_the_text(frame):
    from qualitune.scorer import Scorer, ScorerSpec

    s = TrainSettings(
        **{**TOY_RECIPE, "tuning": "full"},
        method="two_stage",
        stage1_epochs=2,
        epochs=2,
        lr=3e-3,
        batch_size=4,
    )
    model, tok = _tiny()
    result = train(model, tok, PROC, frame, s, n_frames=1)
    spec = ScorerSpec(
        base_model=TINY_NAME,
        answer_format=s.fmt.to_dict(),
        max_pixels=84 * 84,
        two_stage=True,
        describe_max_new_tokens=12,
        max_invalid_mass=1.0,  # seconds of training on random weights: score every item
    )
    run = Scorer(result.model, tok, spec).score_paths(frame["path"].tolist()[:4], mode="expected")
    for r in run.results:
        assert isinstance(r["description"], str) and r["description"]
        assert r["score"] is None or 10 <= r["score"] <= 50


def test_the_decoded_media_cache_is_bounded_in_bytes(tmp_path):
    from media_factory import write_image
    from qualitune.training import _MediaCache

    paths = [str(write_image(tmp_path / f"{i}.png", seed=i, size=(64, 48))) for i in range(5)]
    cache = _MediaCache(max_mb=3 * 64 * 48 * 3 / 2**20)  # room for three of them
    first = cache.get(paths[0], 2)
    for p in paths:
        cache.get(p, 2)
    assert cache.nbytes == 3 * 64 * 48 * 3 and len(cache._items) == 3
    assert (paths[0], 2) not in cache._items  # the oldest went first
    again = cache.get(paths[0], 2)
    assert again is not first and again.tobytes() == first.tobytes()
