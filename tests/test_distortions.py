"""KADID-style distortions: severity rises with level, purity, determinism, temporal distortions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qualitune.demo import distortions as D
from qualitune.demo import load_kadid_table, photo_path


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Two natural 128-px crops with different content (a portrait, a cup of coffee)."""
    out = []
    for name, (y, x) in (("astronaut.png", (60, 180)), ("coffee.png", (120, 200))):
        with Image.open(photo_path(name)) as im:
            out.append(np.asarray(im.convert("RGB"))[y : y + 128, x : x + 128].copy())
    return out


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


@pytest.mark.parametrize("kind", [k for k in D.KINDS if k != "contrast_change"])
def test_error_against_the_reference_rises_with_level(crops: list[np.ndarray], kind: str) -> None:
    for img in crops:
        errors = [_mse(D.apply(img, kind, level, np.random.default_rng(7)), img) for level in D.LEVELS]
        assert np.all(np.diff(errors) > 0), f"{kind}: MSE per level {errors}"


def test_contrast_change_follows_kadids_ladder_from_more_to_less_contrast() -> None:
    # KADID's ladder runs from a contrast boost (level 1) to a strong reduction (level 5); its DMOS
    # peaks in the middle, so "severity" here is the contrast itself, measured on a full-range ramp.
    ramp = np.repeat(np.tile(np.arange(256, dtype=np.uint8), (8, 1))[..., None], 3, axis=2)
    spread = [float(D.apply(ramp, "contrast_change", level).std()) for level in D.LEVELS]
    assert np.all(np.diff(spread) < 0), spread
    assert spread[0] > ramp.std() > spread[-1]


def test_every_distortion_has_a_kadid_row_for_every_level() -> None:
    table = load_kadid_table()
    for kind in D.KINDS:
        assert sorted(table.loc[table["distortion"] == kind, "level"]) == list(D.LEVELS), kind
        assert len(D.LADDERS[kind]) == len(D.LEVELS)


@pytest.mark.parametrize("kind", D.KINDS)
def test_apply_is_pure_and_deterministic(crops: list[np.ndarray], kind: str) -> None:
    img = crops[0]
    before = img.copy()
    a = D.apply(img, kind, 4, np.random.default_rng(3))
    b = D.apply(img, kind, 4, np.random.default_rng(3))
    assert np.array_equal(img, before), "input was modified"
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert np.array_equal(a, b)
    assert not np.array_equal(a, img)


def test_noise_depends_on_the_generator(crops: list[np.ndarray]) -> None:
    a = D.apply(crops[0], "white_noise", 3, np.random.default_rng(1))
    b = D.apply(crops[0], "white_noise", 3, np.random.default_rng(2))
    assert not np.array_equal(a, b)


def test_bad_arguments_are_value_errors(crops: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="unknown distortion"):
        D.apply(crops[0], "sepia", 1)
    with pytest.raises(ValueError, match="level"):
        D.apply(crops[0], "jpeg", 0)
    with pytest.raises(ValueError, match="uint8"):
        D.apply(crops[0].astype(np.float32), "jpeg", 1)


def _frames(n: int) -> list[np.ndarray]:
    return [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(n)]


def test_frame_drop_removes_more_frames_at_higher_levels_and_keeps_order() -> None:
    n = 12
    lengths = []
    for level in D.LEVELS:
        out = D.apply_temporal(_frames(n), "frame_drop", level, np.random.default_rng(level))
        assert len(out) == n - D.n_dropped(n, level)
        values = [int(f[0, 0, 0]) for f in out]
        assert values[0] == 0 and values == sorted(values) and len(set(values)) == len(values)
        lengths.append(len(out))
    assert np.all(np.diff(lengths) < 0), lengths


def test_stutter_keeps_length_and_freezes_more_at_higher_levels() -> None:
    n = 20
    frozen = []
    for level in D.LEVELS:
        out = D.apply_temporal(_frames(n), "stutter", level, np.random.default_rng(level))
        values = [int(f[0, 0, 0]) for f in out]
        assert len(out) == n and values[0] == 0 and values == sorted(values)
        frozen.append(int(np.sum(np.diff(values) == 0)))
    assert np.all(np.diff(frozen) > 0), frozen


def test_temporal_rejects_single_frames_and_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        D.apply_temporal(_frames(1), "stutter", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown distortion"):
        D.apply_temporal(_frames(4), "jpeg", 1, np.random.default_rng(0))
