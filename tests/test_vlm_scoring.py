"""Scorers on the tiny model: exact integer probabilities, batch/padding invariance, strict parsing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qualitune.vlm.answers import ParseReport, parse_integer, parse_level
from qualitune.vlm.inputs import encode_batch, make_image_processor, model_inputs
from qualitune.vlm.model import TINY_NAME, load_model
from qualitune.vlm.scoring import (
    expected_scores,
    greedy_scores,
    integer_distribution,
    level_index,
    level_scores,
    mrope_positions,
)

Q = "Rate the quality from 10 to 50. Answer with an integer only."
SIZES = [(60, 80), (112, 112), (56, 200), (90, 90), (120, 60), (70, 140), (100, 100), (56, 56)]


def _img(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model(TINY_NAME)
    # Random tied embeddings make the last input token ("\n") win every argmax; an untied, wider
    # random head gives answers and digit distributions that differ per image, so invariance
    # tests compare something that varies.
    # Small input embeddings let the image tokens, not the last text token, drive the answer.
    g = torch.Generator().manual_seed(1)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=g) * 0.3)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 0.02, generator=g)
    return model, tok


@pytest.fixture(scope="module")
def proc():
    return make_image_processor(56 * 56, 112 * 112)


@pytest.fixture(scope="module")
def images():
    return [_img(h, w, i) for i, (h, w) in enumerate(SIZES)]


def test_parse_integer_is_strict():
    assert parse_integer("35", 10, 50) == 35
    assert parse_integer("  42\n", 10, 50) == 42
    for bad in ("35.", "3.5", "score: 35", "35/50", "-20", "+20", "", "9", "51", "35 40", "thirty"):
        assert parse_integer(bad, 10, 50) is None, bad
    assert parse_level(" Good.") == 3 and parse_level("excellent") == 4 and parse_level("very good") is None


def test_parse_report_counts_and_keeps_raw_texts():
    report = ParseReport()
    assert report.add(0, "35", parse_integer("35", 10, 50)) == 35
    assert report.add(1, "about 35", parse_integer("about 35", 10, 50)) is None
    assert report.n_failed == 1 and report.failures == [(1, "about 35")]
    assert report.summary() == {"answers": 2, "parse_failures": 1, "parse_failure_rate": 0.5}


def test_level_bins():
    assert [level_index(k, 10, 50) for k in (10, 14, 15, 20, 30, 40, 44, 45, 50)] == [
        0,
        0,
        1,
        1,
        2,
        3,
        3,
        4,
        4,
    ]
    assert [level_index(k, 1, 5) for k in range(1, 6)] == [0, 1, 2, 3, 4]


def test_mrope_positions_ignore_left_padding(tiny, proc, images):
    model, tok = tiny
    batch = model_inputs(model, encode_batch(images[:3], Q, tokenizer=tok, image_processor=proc))
    pos = mrope_positions(model, batch)
    for i, im in enumerate(images[:3]):
        alone = model_inputs(model, encode_batch([im], Q, tokenizer=tok, image_processor=proc))
        p1 = mrope_positions(model, alone)
        n = p1.shape[-1]
        assert torch.equal(pos[:, i, -n:], p1[:, 0])
        # vision tokens really get 2-D positions (height and width differ somewhere)
        assert not torch.equal(p1[1], p1[2])


def test_integer_distribution_matches_teacher_forcing(tiny, proc, images):
    """The cached-trie probabilities equal full forward passes over prompt + answer tokens.

    [1, 12] exercises both branches: "1" is a valid answer and the prefix of 10-12, so its
    probability includes P(end of answer | "1").
    """
    model, tok = tiny
    lo, hi = 1, 12
    items = images[:2]
    batch = encode_batch(items, Q, tokenizer=tok, image_processor=proc)
    probs, invalid = integer_distribution(model, tok, batch, lo, hi)
    end_ids = [151643, 151645]
    for k in (1, 5, 10, 12):
        answers = [str(k)] * len(items)
        full = encode_batch(
            items, Q, answers, tokenizer=tok, image_processor=proc, answer_suffix="", padding_side="right"
        )
        with torch.no_grad():
            logits = model(**model_inputs(model, {k2: v for k2, v in full.items() if k2 != "labels"})).logits
        logp = torch.log_softmax(logits.double(), dim=-1)
        for row in range(len(items)):
            n = int(full["attention_mask"][row].sum())
            digits = full["input_ids"][row, n - len(str(k)) : n]
            total = sum(float(logp[row, n - len(str(k)) - 1 + j, d]) for j, d in enumerate(digits.tolist()))
            if k == 1:
                total += float(torch.logsumexp(logp[row, n - 1, end_ids], dim=0))
            assert probs[row, k - lo].item() == pytest.approx(np.exp(total), rel=1e-4)
    assert torch.allclose(invalid, 1 - probs.sum(1))


def test_scores_do_not_depend_on_batch_or_padding(tiny, proc, images):
    model, tok = tiny
    batch = encode_batch(images, Q, tokenizer=tok, image_processor=proc)
    assert (batch["attention_mask"] == 0).any()  # mixed sizes really pad
    # random weights: nearly all mass is off the valid answers, so the threshold is off here
    many_exp = expected_scores(model, tok, batch, 10, 50, max_invalid_mass=1.0)
    many_lvl = level_scores(model, tok, batch, 10, 50)
    report = ParseReport()
    many_greedy = greedy_scores(model, tok, batch, 10, 50, report=report)
    assert report.total == 8 and report.n_failed == sum(not r.parse_ok for r in many_greedy)
    assert len({r.answer for r in many_greedy}) > 1  # answers vary per image
    for i, im in enumerate(images):
        one = encode_batch([im], Q, tokenizer=tok, image_processor=proc)
        e, lv, g = (
            expected_scores(model, tok, one, 10, 50, max_invalid_mass=1.0)[0],
            level_scores(model, tok, one, 10, 50)[0],
            greedy_scores(model, tok, one, 10, 50)[0],
        )
        assert e.score == pytest.approx(many_exp[i].score, abs=1e-4)
        assert np.allclose(e.level_probs, many_exp[i].level_probs, atol=1e-4)
        assert lv.score == pytest.approx(many_lvl[i].score, abs=1e-4)
        assert g.answer == many_greedy[i].answer and g.parse_ok == many_greedy[i].parse_ok
    for r in many_exp:
        assert 10 <= r.score <= 50 and sum(r.level_probs) == pytest.approx(1.0)
        assert 0.0 <= r.invalid_mass <= 1.0


def test_video_grid_scoring_is_batch_invariant(tiny, proc, images):
    model, tok = tiny
    clips = [[images[1], _img(112, 112, 20)], [images[3], images[3], images[3]]]
    kw = dict(tokenizer=tok, image_processor=proc, video_mode="video")
    both = expected_scores(
        model, tok, encode_batch(clips + [images[0]], Q, **kw), 10, 50, max_invalid_mass=1.0
    )
    for i, clip in enumerate(clips):
        alone = expected_scores(model, tok, encode_batch([clip], Q, **kw), 10, 50, max_invalid_mass=1.0)[0]
        assert alone.score is not None
        assert alone.score == pytest.approx(both[i].score, abs=1e-4)


def test_right_padding_is_refused_for_expected_scoring(tiny, proc, images):
    model, tok = tiny
    batch = encode_batch(images[:2], Q, tokenizer=tok, image_processor=proc, padding_side="right")
    with pytest.raises(ValueError, match="left"):
        expected_scores(model, tok, batch, 10, 50, max_invalid_mass=1.0)


def test_shared_prefix_forward_matches_plain_forward(tiny, proc):
    """Same-size images: no padding, so the rows share the prompt up to the first vision token,
    which `_prefix_forward` computes once; log-probs and scores equal the plain forward."""
    from qualitune.vlm.scoring import _prefix_forward, shared_prefix_length

    model, tok = tiny
    same = [_img(84, 84, 40 + i) for i in range(3)]
    batch = encode_batch(same, Q, tokenizer=tok, image_processor=proc, system="You rate photos for a living.")
    assert shared_prefix_length(model_inputs(model, batch)) >= 8
    with torch.no_grad():
        shared, *_ = _prefix_forward(model, batch, share_prefix=True)
        plain, *_ = _prefix_forward(model, batch, share_prefix=False)
    assert torch.allclose(shared, plain, atol=1e-4)
    scores = expected_scores(model, tok, batch, 10, 50, max_invalid_mass=1.0)
    for i, im in enumerate(same):
        alone = expected_scores(
            model,
            tok,
            encode_batch(
                [im], Q, tokenizer=tok, image_processor=proc, system="You rate photos for a living."
            ),
            10,
            50,
            max_invalid_mass=1.0,
        )[0]
        assert alone.score is not None
        assert alone.score == pytest.approx(scores[i].score, abs=1e-4)


def test_expected_mode_counts_every_item_and_an_underflow_as_a_failure(monkeypatch):
    """`parse_failures` covers `expected` mode too: an item whose valid answers all underflowed is
    a failure in the report (it was only a None score before), the others are counted answers."""
    from qualitune.vlm import scoring
    from qualitune.vlm.tasks import AnswerFormat

    fmt = AnswerFormat("integer", 10, 50)
    n = len(fmt.candidates())
    probs = torch.zeros((2, n), dtype=torch.float64)
    probs[0, 5] = 0.9  # row 0: a valid answer; row 1: nothing valid
    monkeypatch.setattr(scoring, "candidate_distribution", lambda *a, **k: (probs, torch.tensor([0.1, 1.0])))
    report = ParseReport()
    out = scoring.format_scores(None, None, {}, fmt, "expected", report=report, index_offset=10)
    assert out[0].score == pytest.approx(fmt.candidates()[5][1]) and out[1].score is None
    assert report.total == 2 and report.failures == [(11, "no probability on any valid answer")]


def test_expected_score_past_max_invalid_mass_is_unparsed(monkeypatch):
    """An item with almost all its answer probability off-format gets no score (#20: a "valid"
    21.96 came from invalid mass 0.99999998): it is a failure with its invalid mass, never a value."""
    from qualitune.vlm import scoring
    from qualitune.vlm.tasks import AnswerFormat

    fmt = AnswerFormat("integer", 10, 50)
    n = len(fmt.candidates())
    probs = torch.zeros((3, n), dtype=torch.float64)
    probs[0, 5] = 0.9
    probs[1, 11] = 0.4
    probs[2, 3] = 2e-8
    invalid = torch.tensor([0.1, 0.6, 0.99999998], dtype=torch.float64)
    monkeypatch.setattr(scoring, "candidate_distribution", lambda *a, **k: (probs, invalid))
    report = ParseReport()
    out = scoring.format_scores(None, None, {}, fmt, "expected", report=report)  # default 0.5
    assert out[0].score == pytest.approx(fmt.candidates()[5][1])
    assert out[1].score is None and out[2].score is None
    assert out[2].invalid_mass == pytest.approx(0.99999998) and not out[2].parse_ok
    assert [i for i, _ in report.failures] == [1, 2]
    assert "invalid mass 0.6 > max_invalid_mass 0.5" in report.failures[0][1]
    assert report.summary()["parse_failures"] == 2
    # the threshold is a parameter: 1.0 accepts every item that has any valid mass
    lenient = scoring.format_scores(None, None, {}, fmt, "expected", max_invalid_mass=1.0)
    assert [o.score is not None for o in lenient] == [True, True, True]
    assert lenient[2].score == pytest.approx(fmt.candidates()[3][1])
    with pytest.raises(ValueError, match="max_invalid_mass must be in"):
        scoring.format_scores(None, None, {}, fmt, "expected", max_invalid_mass=1.5)


def test_scorer_spec_carries_max_invalid_mass(tmp_path):
    """The rule travels with the scorer folder (CLI, evaluate, gate and serving read it) and the
    loader can override it; an untrained tiny model's items are then all unparsed at 0.5."""
    from qualitune.scorer import Scorer, ScorerSpec
    from vlm_factory import tiny_scorer_dir

    assert ScorerSpec(base_model="x", answer_format={}).max_invalid_mass == 0.5
    with pytest.raises(ValueError, match="max_invalid_mass"):
        ScorerSpec(base_model="x", answer_format={}, max_invalid_mass=-0.1)
    folder = tiny_scorer_dir(tmp_path / "s", max_invalid_mass=0.5)
    assert ScorerSpec.read(folder).max_invalid_mass == 0.5
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    strict = Scorer.load(folder).score_paths([str(img)], mode="expected")
    assert strict.results[0]["score"] is None and strict.report.n_failed == 1
    assert strict.results[0]["invalid_mass"] > 0.5
    lenient = Scorer.load(folder, max_invalid_mass=1.0).score_paths([str(img)], mode="expected")
    assert lenient.results[0]["score"] is not None and lenient.report.n_failed == 0
