"""Fast hand-crafted annotators: one physical property each, milliseconds per image.

They are not quality models; they describe *why* an image may be poor (blur, noise, blocking,
exposure, flat colour) and give PMOD cheap, diverse opinions. All work on MATLAB-style grey
(`rgb2gray`) or on RGB directly, with 0..255 units.
"""

from __future__ import annotations

import cv2
import numpy as np

from qualitune.annotators import _nss
from qualitune.annotators.base import Annotator, register


class Sharpness(Annotator):
    """Variance of the 3x3 Laplacian (Pech-Pacheco 2000): energy of fine detail; higher = sharper."""

    name = "sharpness"
    higher_is_better = True
    native_range = (0.0, 5000.0)
    min_size = (3, 3)
    description = "variance of Laplacian of the grey image"

    def _score(self, rgb: np.ndarray) -> float:
        lap = cv2.Laplacian(_nss.rgb2gray(rgb), cv2.CV_64F, ksize=1)
        return float(lap.var())


class Blur(Annotator):
    """scikit-image `blur_effect` (Crete-Roffet 2007): 0 = sharp, 1 = fully blurred."""

    name = "blur"
    higher_is_better = False
    native_range = (0.0, 1.0)
    min_size = (16, 16)
    description = "Crete-Roffet blur effect (skimage.measure.blur_effect)"

    def _score(self, rgb: np.ndarray) -> float:
        from skimage.measure import blur_effect

        return float(blur_effect(_nss.rgb2gray(rgb) / 255.0))


class Noise(Annotator):
    """Gaussian noise sigma by Immerkaer (1996): the 3x3 mask [1 -2 1; -2 4 -2; 1 -2 1] cancels
    image structure up to second order, so the mean absolute response (times sqrt(pi/2)/6) measures
    the noise, in grey levels; lower = cleaner. (skimage's wavelet estimator needs PyWavelets.)"""

    name = "noise"
    higher_is_better = False
    native_range = (0.0, 25.0)
    min_size = (3, 3)
    description = "Immerkaer noise sigma of the grey image, in grey levels"

    _MASK = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])

    def _score(self, rgb: np.ndarray) -> float:
        g = _nss.rgb2gray(rgb)
        resp = cv2.filter2D(g, cv2.CV_64F, self._MASK)[1:-1, 1:-1]  # valid part only
        return float(np.sqrt(np.pi / 2.0) / 6.0 * np.abs(resp).mean())


class Blockiness(Annotator):
    """JPEG 8x8 blockiness: mean |step| across 8-pixel grid lines divided by the mean |step| inside
    blocks (both directions). 1 = no grid; > 1 = visible block edges. The grid is taken at the image
    origin, where JPEG encoders put it (a cropped/resized JPEG loses the alignment and reads ~1)."""

    name = "blockiness"
    higher_is_better = False
    native_range = (0.8, 3.0)
    min_size = (16, 16)
    description = "8x8 grid-boundary to in-block gradient ratio"

    def _score(self, rgb: np.ndarray) -> float:
        g = _nss.rgb2gray(rgb)
        ratios = []
        for d in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0).T)):
            cols = np.arange(d.shape[1])
            boundary = (cols % 8) == 7  # step between pixel 8k+7 and 8k+8
            inside = d[:, ~boundary].mean()
            ratios.append(d[:, boundary].mean() / inside if inside > 0 else np.nan)
        return float(np.mean(ratios))


class Colourfulness(Annotator):
    """Hasler & Suesstrunk (2003) colourfulness M = sigma_rgyb + 0.3 mu_rgyb; higher = more colourful."""

    name = "colourfulness"
    higher_is_better = True
    native_range = (0.0, 150.0)
    description = "Hasler-Suesstrunk colourfulness"

    def _score(self, rgb: np.ndarray) -> float:
        r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
        rg = r - g
        yb = 0.5 * (r + g) - b
        std = np.hypot(rg.std(), yb.std())
        mean = np.hypot(rg.mean(), yb.mean())
        return float(std + 0.3 * mean)


class Contrast(Annotator):
    """RMS contrast: std of the grey image scaled to 0..1; higher = more contrast (0.5 is the max)."""

    name = "contrast"
    higher_is_better = True
    native_range = (0.0, 0.5)
    description = "RMS contrast of the grey image"

    def _score(self, rgb: np.ndarray) -> float:
        return float((_nss.rgb2gray(rgb) / 255.0).std())


class Exposure(Annotator):
    """Exposure: 1 - 2|mean grey - 0.5| - clipped share (pixels at 0 or 255), floored at 0.
    1 = mean at mid-grey and nothing clipped; 0 = black, white, or mostly clipped."""

    name = "exposure"
    higher_is_better = True
    native_range = (0.0, 1.0)
    description = "distance of mean luminance from mid-grey, penalised by clipped pixels"

    def _score(self, rgb: np.ndarray) -> float:
        g = _nss.rgb2gray(rgb)
        clipped = float(np.mean((g <= 0) | (g >= 255)))
        return max(0.0, 1.0 - 2.0 * abs(g.mean() / 255.0 - 0.5) - clipped)


for _cls in (Sharpness, Blur, Noise, Blockiness, Colourfulness, Contrast, Exposure):
    register(_cls.name, _cls)
