"""MATLAB-faithful building blocks shared by NIQE, BRISQUE and PIQE.

The published NIQE/BRISQUE/PIQE numbers come from MATLAB code, and their learned parameters (the
pristine Gaussian of NIQE, the SVR of BRISQUE) were fitted on features computed the MATLAB way. A
"close enough" grey conversion or resize shifts the features off the manifold the parameters were
fitted on, and the scores drift by several units. So each helper here mirrors one MATLAB function:
`rgb2gray` (rounded to uint8), `imresize` (bicubic with antialiasing, symmetric borders),
`fspecial('gaussian', 7, 7/6)` filtering (`imfilter` replicate or `filter2` zero borders), and the
moment-matching GGD/AGGD fits on the 0.2:0.001:10 grid of the LIVE reference code.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import gamma as gamma_fn

# MATLAB rgb2gray: the first row of inv(YIQ->RGB), i.e. what MATLAB itself uses (not 0.299/0.587/0.114).
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])

# Shape grid of the LIVE reference code (estimateggdparam.m / estimateaggdparam.m).
_GAM = np.arange(200, 10001, dtype=np.float64) / 1000.0
_R_GGD = gamma_fn(1.0 / _GAM) * gamma_fn(3.0 / _GAM) / gamma_fn(2.0 / _GAM) ** 2
_R_AGGD = gamma_fn(2.0 / _GAM) ** 2 / (gamma_fn(1.0 / _GAM) * gamma_fn(3.0 / _GAM))


def rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB `double(rgb2gray(uint8_rgb))`: weighted sum rounded half away from zero to 0..255."""
    y = rgb.astype(np.float64) @ _RGB2GRAY
    return np.floor(y + 0.5)


def rgb2ycbcr_y(rgb: np.ndarray) -> np.ndarray:
    """Luma of MATLAB `rgb2ycbcr(uint8_rgb)` (BT.601, studio swing 16..235), rounded like uint8."""
    y = rgb.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0
    return np.floor(y + 0.5)


def gaussian_1d(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """The separable factor of `fspecial('gaussian', size, sigma)` (normalised to sum 1)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def gauss_filter(img: np.ndarray, mode: str, size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    """2-D Gaussian correlation, done separably (the MATLAB window is an outer product).

    mode 'nearest' = MATLAB imfilter(..., 'replicate'); mode 'constant' = filter2(..., 'same').
    """
    k = gaussian_1d(size, sigma)
    out = ndimage.correlate1d(img, k, axis=0, mode=mode, cval=0.0)
    return ndimage.correlate1d(out, k, axis=1, mode=mode, cval=0.0)


def mscn(img: np.ndarray, mode: str, c: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients: (I - mu) / (sigma + C)."""
    mu = gauss_filter(img, mode)
    sigma = np.sqrt(np.abs(gauss_filter(img * img, mode) - mu * mu))
    return (img - mu) / (sigma + c)


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _resize_weights(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize's `contributions`: bicubic weights, widened by 1/scale when shrinking."""
    kernel_width = 4.0
    antialias = scale < 1
    if antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(p, dtype=np.float64)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if antialias else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    keep = np.any(w != 0, axis=0)
    w, idx = w[:, keep], idx[:, keep].astype(np.int64)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])  # symmetric borders
    return w, mirror[np.mod(idx - 1, 2 * in_len)]


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB `imresize(img, scale)` for a 2-D double image (bicubic, antialiasing on)."""
    h, w = img.shape
    out_h, out_w = int(math.ceil(h * scale)), int(math.ceil(w * scale))
    wh, ih = _resize_weights(h, out_h, scale)
    tmp = np.einsum("ok,okw->ow", wh, img[ih])
    ww, iw = _resize_weights(w, out_w, scale)
    return np.einsum("ok,hok->ho", ww, tmp[:, iw])


def estimate_ggd(vec: np.ndarray) -> tuple[float, float]:
    """(shape, std) of a zero-mean generalised Gaussian, as estimateggdparam.m (grid search)."""
    sigma_sq = float(np.mean(vec * vec))
    e = float(np.mean(np.abs(vec)))
    rho = sigma_sq / (e * e) if e > 0 else math.nan
    if not math.isfinite(rho):
        return math.nan, math.sqrt(sigma_sq)
    return float(_GAM[np.argmin(np.abs(rho - _R_GGD))]), math.sqrt(sigma_sq)


def estimate_aggd(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise asymmetric GGD fit (estimateaggdparam.m): returns (alpha, left std, right std).

    `vecs` is (n, m): n independent samples (image blocks) fitted at once. A row without negative
    or positive values yields NaN, as MATLAB does (mean of an empty set), so callers can drop it.
    """
    vecs = np.atleast_2d(vecs)
    neg, pos = vecs < 0, vecs > 0
    sq = vecs * vecs
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(np.where(neg, sq, 0.0).sum(1) / neg.sum(1))
        right = np.sqrt(np.where(pos, sq, 0.0).sum(1) / pos.sum(1))
        gammahat = left / right
        rhat = np.mean(np.abs(vecs), axis=1) ** 2 / np.mean(sq, axis=1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = np.full(vecs.shape[0], np.nan)
    ok = np.isfinite(rhatnorm)
    if ok.any():
        alpha[ok] = _GAM[np.argmin((_R_AGGD[None, :] - rhatnorm[ok, None]) ** 2, axis=1)]
    return alpha, left, right


# The four neighbour directions of the LIVE code: circshift offsets (rows, cols).
SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))
