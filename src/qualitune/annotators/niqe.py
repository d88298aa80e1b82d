"""NIQE (Mittal, Soundararajan, Bovik 2013): distance of an image's NSS features from a pristine model.

Lower is better. Faithful to the MATLAB reference (niqe_release `computequality.m`, which MATLAB's
own `niqe` follows): MATLAB rgb2gray; crop to whole 96x96 blocks; MSCN with a 7x7 Gaussian
(sigma 7/6, replicate borders); per block 18 AGGD features (circular shifts inside the block, as
`blockproc` does); the same on the image halved by `imresize` (bicubic, antialiased) with 48x48
blocks; fit a Gaussian (nanmean / nancov) and return
sqrt((mu_p - mu_d)' pinv((C_p + C_d)/2) (mu_p - mu_d)).

The pristine model (mu, cov of 36 features) is the one published with the LIVE NIQE release
(`modelparameters.mat`), shipped here as `resources/niqe_pristine_live.npz` (see resources/PROVENANCE.md).
So this reproduces the reference NIQE code (pyiqa's `niqe` row). MATLAB's built-in `niqe()` uses a
different default model (MathWorks' own fit) whose parameters are not distributed outside MATLAB.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from scipy.special import gamma as gamma_fn

from qualitune.annotators import _nss
from qualitune.annotators.base import Annotator, register

BLOCK = 96


def load_pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """(mu (36,), cov (36, 36)) of the published pristine multivariate Gaussian."""
    with (
        resources.files("qualitune.annotators").joinpath("resources/niqe_pristine_live.npz").open("rb") as fh
    ):
        data = np.load(fh)
        return data["mu"].astype(np.float64), data["cov"].astype(np.float64)


def block_features(img: np.ndarray, block: int) -> np.ndarray:
    """(n_blocks, 18) NIQE features of the MSCN image `img` cut into block x block tiles."""
    h, w = img.shape
    nh, nw = h // block, w // block
    tiles = img[: nh * block, : nw * block].reshape(nh, block, nw, block).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(nh * nw, block, block)
    flat = tiles.reshape(len(tiles), -1)
    alpha, left, right = _nss.estimate_aggd(flat)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.sqrt(gamma_fn(1.0 / alpha) / gamma_fn(3.0 / alpha))
    feats = [alpha, (left + right) * scale / 2.0]
    for shift in _nss.SHIFTS:
        pair = (tiles * np.roll(tiles, shift, axis=(1, 2))).reshape(len(tiles), -1)
        alpha, left, right = _nss.estimate_aggd(pair)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.sqrt(gamma_fn(1.0 / alpha) / gamma_fn(3.0 / alpha))
            beta_l, beta_r = left * scale, right * scale
            mean = (beta_r - beta_l) * gamma_fn(2.0 / alpha) / gamma_fn(1.0 / alpha)
        feats.extend((alpha, mean, beta_l, beta_r))
    return np.stack(feats, axis=1)


def niqe_features(gray: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """(n_blocks, 36) two-scale features of a grey image (0..255 doubles)."""
    h, w = gray.shape
    img = gray[: (h // block) * block, : (w // block) * block]
    f1 = block_features(_nss.mscn(img, "nearest"), block)
    half = _nss.imresize(img / 255.0, 0.5) * 255.0
    f2 = block_features(_nss.mscn(half, "nearest"), block // 2)
    return np.concatenate([f1, f2], axis=1)


def niqe_distance(feats: np.ndarray, mu_p: np.ndarray, cov_p: np.ndarray) -> float:
    """Eq. 10 of the paper, with MATLAB's nanmean / nancov (rows with any NaN left out)."""
    rows = feats[~np.isnan(feats).any(axis=1)]
    if len(rows) < 2:
        return float("nan")  # no textured block at all (e.g. a flat image): NIQE is undefined
    mu_d = np.nanmean(feats, axis=0)
    cov_d = np.cov(rows, rowvar=False)
    diff = mu_p - mu_d
    return float(np.sqrt(diff @ np.linalg.pinv((cov_p + cov_d) / 2.0) @ diff))


class NIQE(Annotator):
    name = "niqe"
    higher_is_better = False
    native_range = (0.0, 100.0)  # unbounded above in theory; natural photos fall in ~2-10
    version = "1"
    min_size = (BLOCK, BLOCK)
    description = "Natural Image Quality Evaluator (pristine MVG model, MATLAB-faithful)"

    def __init__(self) -> None:
        self._mu, self._cov = load_pristine_model()

    def _score(self, rgb: np.ndarray) -> float:
        return niqe_distance(niqe_features(_nss.rgb2gray(rgb)), self._mu, self._cov)


register("niqe", NIQE)
