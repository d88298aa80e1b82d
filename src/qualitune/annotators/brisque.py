"""BRISQUE (Mittal, Moorthy, Bovik 2012) with the published LIVE-trained SVR.

Lower is better (DMOS-like, roughly 0-100; the SVR can leave that range slightly).
Faithful to the LIVE reference code (`brisque_feature.m` + `brisquescore.m`): the luma of MATLAB
`rgb2ycbcr` (uint8-rounded; with rgb2gray instead, one of the five official calibration values is
missed by 7 %, with rgb2ycbcr luma all five are within 1.1 % or 0.35 absolute);
MSCN with a 7x7 Gaussian (sigma 7/6) and *zero* borders (`filter2(..., 'same')`); a GGD fit of the
MSCN map (shape, variance) and AGGD fits of the four neighbour products over the whole image
(circular shifts); the same on the image halved by MATLAB `imresize`; the 36 features scaled to
[-1, 1] with the published `allrange` and scored by the RBF epsilon-SVR `allmodel` (gamma 0.05).
The SVR is evaluated here directly (sum of coef * exp(-gamma |x - sv|^2) - rho), so libsvm is not
needed. Model: resources/brisque_live_svr.npz (see resources/PROVENANCE.md).

MATLAB's built-in `brisque()` (pyiqa's `brisque_matlab`) uses different features (replicate
borders, AGGD beta parameters) and MathWorks' own SVR, whose parameters are not distributed outside
MATLAB; this annotator therefore reproduces the reference LIVE BRISQUE.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from scipy.special import gamma as gamma_fn

from qualitune.annotators import _nss
from qualitune.annotators.base import Annotator, register


def load_svr() -> dict[str, np.ndarray | float]:
    with resources.files("qualitune.annotators").joinpath("resources/brisque_live_svr.npz").open("rb") as fh:
        data = np.load(fh)
        return {k: data[k] for k in data.files}


def _scale_features(gray: np.ndarray) -> list[float]:
    m = _nss.mscn(gray, "constant")
    alpha, std = _nss.estimate_ggd(m.ravel())
    feats = [alpha, std * std]
    for shift in _nss.SHIFTS:
        pair = (m * np.roll(m, shift, axis=(0, 1))).reshape(1, -1)
        a, left, right = (float(v[0]) for v in _nss.estimate_aggd(pair))
        with np.errstate(invalid="ignore", divide="ignore"):
            const = np.sqrt(gamma_fn(1.0 / a)) / np.sqrt(gamma_fn(3.0 / a))
            mean = (right - left) * (gamma_fn(2.0 / a) / gamma_fn(1.0 / a)) * const
        feats.extend((a, float(mean), left * left, right * right))
    return feats


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """The 36 BRISQUE features of a grey image (0..255 doubles): 18 at full and 18 at half size."""
    return np.array(_scale_features(gray) + _scale_features(_nss.imresize(gray, 0.5)), dtype=np.float64)


class BRISQUE(Annotator):
    name = "brisque"
    higher_is_better = False
    native_range = (0.0, 100.0)
    version = "1"
    min_size = (32, 32)  # below this the half-scale MSCN statistics rest on a handful of pixels
    description = "BRISQUE with the LIVE-trained SVR of the reference release"

    def __init__(self) -> None:
        m = load_svr()
        self._sv = np.asarray(m["sv"], dtype=np.float64)
        self._coef = np.asarray(m["coef"], dtype=np.float64)
        self._rho = float(m["rho"])
        self._gamma = float(m["gamma"])
        self._lo = np.asarray(m["feature_min"], dtype=np.float64)
        self._hi = np.asarray(m["feature_max"], dtype=np.float64)

    def predict(self, features: np.ndarray) -> float:
        """libsvm svm-scale to [-1, 1] with the published ranges, then the epsilon-SVR decision."""
        x = -1.0 + 2.0 * (features - self._lo) / (self._hi - self._lo)
        k = np.exp(-self._gamma * np.sum((self._sv - x[None, :]) ** 2, axis=1))
        return float(k @ self._coef - self._rho)

    def _score(self, rgb: np.ndarray) -> float:
        feats = brisque_features(_nss.rgb2ycbcr_y(rgb))
        if not np.all(np.isfinite(feats)):
            return float("nan")
        return self.predict(feats)


register("brisque", BRISQUE)
