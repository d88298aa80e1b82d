"""KADID-10k-style synthetic distortions, five levels each, on 8-bit RGB arrays.

Each distortion carries the slug of the KADID-10k type it reproduces and KADID's own parameter
ladder (from the generator `imdist_generator.m` released with KADID-10k / KADIS-700k), so the
demo dataset can label every item with the human DMOS KADID measured for that type and level
(`qualitune.demo`). Level 1 is KADID's mildest setting, level 5 its strongest.

Deliberate simplifications, kept small because the MOS is borrowed, not measured:
- KADID min-max stretches every image before and after distorting (`mapmm`); we do not, so a
  distorted item differs from its reference only by the distortion itself.
- Pixel-sized parameters (blur radii, kernel lengths) are KADID's, applied to our crops (256 px by
  default, KADID's images are 512x384): blurs are slightly stronger relative to the frame.
- `quantization` uses equal-width bins per channel where KADID uses multi-level Otsu thresholds;
  `color_quantization` uses PIL's median cut + Floyd-Steinberg dither where KADID uses `rgb2ind`.

All functions are pure: the input is never modified and randomness comes only from `rng`.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image
from scipy.interpolate import CubicSpline

from qualitune.errors import QualituneError

LEVELS = (1, 2, 3, 4, 5)

# KADID-10k parameter ladders, level 1 -> 5 (imdist_generator.m).
LADDERS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (0.1, 0.5, 1, 2, 5),  # sigma, pixels
    "lens_blur": (1, 2, 4, 6, 8),  # disk radius, pixels
    "motion_blur": (1, 2, 4, 6, 10),  # line length, pixels (random angle)
    "color_quantization": (64, 48, 32, 16, 8),  # palette size
    "color_saturation_1": (0.4, 0.2, 0.1, 0, -0.4),  # HSV saturation factor
    "color_saturation_2": (1, 2, 3, 6, 9),  # Lab a*b* factor
    "jpeg2000": (16, 32, 45, 120, 400),  # compression ratio
    "jpeg": (43, 36, 24, 7, 4),  # quality
    "white_noise": (0.001, 0.002, 0.003, 0.005, 0.01),  # variance on [0, 1]
    "impulse_noise": (0.001, 0.005, 0.01, 0.02, 0.03),  # density
    "multiplicative_noise": (0.001, 0.005, 0.01, 0.02, 0.05),  # speckle variance
    "brighten": (0.1, 0.2, 0.4, 0.7, 1.1),  # tone-curve amount
    "darken": (0.05, 0.1, 0.2, 0.4, 0.8),  # tone-curve amount
    "pixelate": (0.01, 0.05, 0.1, 0.2, 0.5),  # strength s; scale z = 0.95 - s**0.6
    "quantization": (20, 16, 13, 10, 7),  # grey levels per channel
    "contrast_change": (0.3, 0.15, 0, -0.4, -0.6),  # S-curve amount (>0 more, <0 less contrast)
}

# Temporal (video-only) distortions, applied to a frame sequence. Their MOS proxy is documented in
# resources/PROVENANCE.md: KADID has no temporal distortion.
DROP_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)  # frame_drop: share of frames removed
FREEZE_FRACTIONS = (0.15, 0.25, 0.35, 0.5, 0.65)  # stutter: share of frames replaced by a frozen one
TEMPORAL_KINDS = ("frame_drop", "stutter")


def _f(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _filter(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    out = cv2.filter2D(img.astype(np.float32), -1, kernel.astype(np.float32), borderType=cv2.BORDER_REPLICATE)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    size = 2 * math.ceil(2 * sigma) + 1  # MATLAB imblurgauss's kernel support
    return cv2.GaussianBlur(img, (size, size), sigma, borderType=cv2.BORDER_REPLICATE)


def disk_kernel(radius: float) -> np.ndarray:
    """fspecial('disk'): the pixel-coverage of a disc, estimated by 16x16 supersampling."""
    r = int(math.ceil(radius))
    sub = (np.arange(16) + 0.5) / 16 - 0.5
    grid = np.arange(-r, r + 1)
    ys = (grid[:, None] + sub[None, :]).reshape(-1)
    inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= radius**2
    cover = inside.reshape(2 * r + 1, 16, 2 * r + 1, 16).mean(axis=(1, 3))
    return cover / cover.sum()


def lens_blur(img: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    return _filter(img, disk_kernel(radius))


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A line of `length` pixels at `angle_deg`, anti-aliased by bilinear splatting."""
    if length <= 1:
        return np.ones((1, 1), np.float32)
    half = (length - 1) / 2
    r = int(math.ceil(half)) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float64)
    theta = math.radians(angle_deg)
    for t in np.linspace(-half, half, int(length * 8) + 1):
        x, y = r + t * math.cos(theta), r - t * math.sin(theta)
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        k[y0, x0] += (1 - fx) * (1 - fy)
        k[y0, x0 + 1] += fx * (1 - fy)
        k[y0 + 1, x0] += (1 - fx) * fy
        k[y0 + 1, x0 + 1] += fx * fy
    return k / k.sum()


def motion_blur(img: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    return _filter(img, motion_kernel(length, float(rng.uniform(0.0, 180.0))))


def color_quantization(img: np.ndarray, colors: float, rng: np.random.Generator) -> np.ndarray:
    pil = Image.fromarray(img)
    palette = pil.quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT)
    return np.asarray(pil.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB"))


def color_saturation_1(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(img)
    hsv[..., 1] *= factor  # negative factors flip hue towards the complement, as in KADID
    return _u8(hsv2rgb(hsv))


def color_saturation_2(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(img)
    lab[..., 1:] *= factor
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, which is the distortion
        warnings.simplefilter("ignore")
        return _u8(lab2rgb(lab))


def jpeg2000(img: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)])
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg(img: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def white_noise(img: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    return _u8(_f(img) + rng.normal(0.0, math.sqrt(var), img.shape).astype(np.float32))


def impulse_noise(img: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    """MATLAB imnoise 'salt & pepper': each sample is hit with probability `density`, half white."""
    out = img.copy()
    u = rng.random(img.shape)
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


def multiplicative_noise(img: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """MATLAB imnoise 'speckle': J = I + n*I with n uniform, zero mean, variance `var`."""
    a = math.sqrt(3.0 * var)
    x = _f(img)
    return _u8(x + x * rng.uniform(-a, a, img.shape).astype(np.float32))


def tone_curve(x: np.ndarray, mid: float) -> np.ndarray:
    """KADID's `curves` with one control point: the parabola through (0,0), (0.5, mid), (1,1)."""
    a = 2.0 - 4.0 * mid
    return np.clip(a * x * x + (1.0 - a) * x, 0.0, 1.0)


def brighten(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """KADID imbrighten: two parts RGB tone curve, one part the same curve on Lab lightness."""
    from skimage.color import lab2rgb, rgb2lab

    x = _f(img)
    mid = 0.5 + amount / 2
    lab = rgb2lab(x)
    lab[..., 0] = tone_curve(lab[..., 0] / 100.0, mid) * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        via_lab = np.clip(lab2rgb(lab), 0.0, 1.0)
    return _u8((2.0 * tone_curve(x, mid) + via_lab) / 3.0)


def darken(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    return _u8(tone_curve(_f(img), 0.5 - amount / 2))


def pixelate(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    z = 0.95 - strength**0.6
    # Nearest both ways, as KADID: the dropped and duplicated rows and columns are the artefact.
    small = cv2.resize(img, (max(1, int(w * z)), max(1, int(h * z))), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def quantization(img: np.ndarray, levels: float, rng: np.random.Generator) -> np.ndarray:
    """Each channel cut into `levels` equal bins over its own range; a bin maps to its mean value."""
    n = int(levels)
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        ch = img[..., c].astype(np.float64)
        lo, hi = ch.min(), ch.max()
        if hi <= lo:
            out[..., c] = img[..., c]
            continue
        idx = np.minimum(((ch - lo) / (hi - lo) * n).astype(np.int64), n - 1)
        sums = np.bincount(idx.ravel(), weights=ch.ravel(), minlength=n)
        counts = np.bincount(idx.ravel(), minlength=n)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        out[..., c] = np.round(means[idx]).astype(np.uint8)
    return out


def contrast_change(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """KADID imcontrastc: MATLAB `spline` (not-a-knot) through 0, .3, .5, .7, 1 on each channel."""
    ys = (0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0)
    curve = CubicSpline((0.0, 0.3, 0.5, 0.7, 1.0), ys, bc_type="not-a-knot")
    lut = _u8(np.clip(curve(np.arange(256) / 255.0), 0.0, 1.0))
    return lut[img]


DistortionFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]

DISTORTIONS: dict[str, DistortionFn] = {
    "gaussian_blur": gaussian_blur,
    "lens_blur": lens_blur,
    "motion_blur": motion_blur,
    "color_quantization": color_quantization,
    "color_saturation_1": color_saturation_1,
    "color_saturation_2": color_saturation_2,
    "jpeg2000": jpeg2000,
    "jpeg": jpeg,
    "white_noise": white_noise,
    "impulse_noise": impulse_noise,
    "multiplicative_noise": multiplicative_noise,
    "brighten": brighten,
    "darken": darken,
    "pixelate": pixelate,
    "quantization": quantization,
    "contrast_change": contrast_change,
}
KINDS = tuple(DISTORTIONS)


def check_kind_level(kind: str, level: int, kinds: Sequence[str] = KINDS) -> None:
    if kind not in kinds:
        raise QualituneError(f"unknown distortion {kind!r}; choose from {sorted(kinds)}")
    if level not in LEVELS:
        raise QualituneError(f"distortion level must be one of {LEVELS}, got {level!r}")


def apply(img: np.ndarray, kind: str, level: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Distort an HxWx3 uint8 RGB image with KADID type `kind` at `level` (1 mildest .. 5 strongest)."""
    check_kind_level(kind, level)
    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise QualituneError(f"expected an HxWx3 uint8 RGB array, got dtype {arr.dtype} shape {arr.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    out = DISTORTIONS[kind](arr, LADDERS[kind][level - 1], rng)
    return np.ascontiguousarray(out, dtype=np.uint8)


def n_dropped(n_frames: int, level: int) -> int:
    """Frames removed by `frame_drop` at `level`: at least one, never all but one."""
    check_kind_level("frame_drop", level, TEMPORAL_KINDS)
    return int(min(max(1, round(n_frames * DROP_FRACTIONS[level - 1])), n_frames - 1))


def apply_temporal(
    frames: Sequence[np.ndarray], kind: str, level: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Temporal distortion of a frame sequence (played back at an unchanged frame rate).

    - `frame_drop`: frames are removed, so motion jumps and the clip is shorter
      (len = n - n_dropped(n, level)); the first frame is always kept.
    - `stutter`: the sequence keeps its length but freezes: at randomly chosen frames the previous
      frame is shown again, in runs of 1-3, covering about FREEZE_FRACTIONS[level-1] of the clip.
    """
    check_kind_level(kind, level, TEMPORAL_KINDS)
    n = len(frames)
    if n < 2:
        raise QualituneError(f"a temporal distortion needs at least 2 frames, got {n}")
    if kind == "frame_drop":
        drop = set(rng.choice(np.arange(1, n), size=n_dropped(n, level), replace=False).tolist())
        return [f.copy() for i, f in enumerate(frames) if i not in drop]
    n_frozen = max(1, min(n - 1, round(n * FREEZE_FRACTIONS[level - 1])))
    frozen = np.zeros(n, bool)
    while frozen.sum() < n_frozen:
        start = int(rng.integers(1, n))
        for i in range(start, min(n, start + int(rng.integers(1, 4)))):
            if frozen.sum() < n_frozen:
                frozen[i] = True
    out: list[np.ndarray] = []
    for i, f in enumerate(frames):
        out.append(out[-1].copy() if frozen[i] else f.copy())
    return out
