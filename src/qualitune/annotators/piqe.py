"""PIQE (Venkatanath et al., NCC 2015): share of distorted 16x16 blocks among the active ones.

Lower is better, range [0, 100]. Follows MATLAB `piqe`: MATLAB rgb2gray; grey levels rescaled so
the image maximum is 255; symmetric padding up to whole 16x16 blocks (bottom/right); MSCN with a
7x7 Gaussian (sigma 7/6, replicate borders); a block is *active* when its MSCN variance > 0.1;
an active block is *impaired* (blockiness/ringing) when any 6-pixel segment of one of its four
edges has std < 0.1, and *noisy* when its std exceeds twice the centre-surround deviation term;
score = (sum over active blocks of impaired*(1 - var) + noisy*var + 1) / (n_active + 1) * 100.
"""

from __future__ import annotations

import numpy as np

from qualitune.annotators import _nss
from qualitune.annotators.base import Annotator, register

BLOCK = 16
ACTIVITY_THRESHOLD = 0.1
IMPAIRED_THRESHOLD = 0.1
SEGMENT = 6


def _segment_std_below(edges: np.ndarray) -> np.ndarray:
    """(n_blocks,) whether any sliding 6-pixel segment of any edge has (unbiased) std < threshold."""
    segs = np.lib.stride_tricks.sliding_window_view(edges, SEGMENT, axis=-1)  # (n, 4, 11, 6)
    return (segs.std(axis=-1, ddof=1) < IMPAIRED_THRESHOLD).any(axis=(1, 2))


def piqe_score(gray: np.ndarray) -> float:
    """PIQE of a grey image with values 0..255 (doubles)."""
    peak = gray.max()
    if peak <= 0:
        return float("nan")  # an all-black image: no blocks, nothing to judge
    img = np.round(255.0 * gray / peak)
    h, w = img.shape
    pad_h, pad_w = (-h) % BLOCK, (-w) % BLOCK
    if pad_h or pad_w:
        img = np.pad(img, ((0, pad_h), (0, pad_w)), mode="symmetric")
    norm = _nss.mscn(img, "nearest")
    nh, nw = norm.shape[0] // BLOCK, norm.shape[1] // BLOCK
    blocks = norm.reshape(nh, BLOCK, nw, BLOCK).transpose(0, 2, 1, 3).reshape(-1, BLOCK, BLOCK)
    var = blocks.reshape(len(blocks), -1).var(axis=1, ddof=1)
    active = var > ACTIVITY_THRESHOLD

    # Noise criterion: centre (the two middle columns) vs surround standard deviation.
    sigma = np.sqrt(var)
    c1 = BLOCK // 2 - 1  # columns 7 and 8 (0-based) of a 16-wide block
    centre = blocks[:, :, c1 : c1 + 2].reshape(len(blocks), -1)
    surround = np.concatenate([blocks[:, :, :c1], blocks[:, :, c1 + 2 :]], axis=2).reshape(len(blocks), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        csd = np.nan_to_num(centre.std(axis=1, ddof=1) / surround.std(axis=1, ddof=1))
        beta = np.abs(sigma - csd) / np.maximum(sigma, csd)
    noisy = sigma > 2.0 * beta

    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    impaired = _segment_std_below(edges)

    dist = active * impaired * (1.0 - var) + active * noisy * var
    return float((dist.sum() + 1.0) / (active.sum() + 1.0) * 100.0)


class PIQE(Annotator):
    name = "piqe"
    higher_is_better = False
    native_range = (0.0, 100.0)
    version = "1"
    min_size = (BLOCK, BLOCK)
    description = "Perception-based Image Quality Evaluator (MATLAB piqe)"

    def _score(self, rgb: np.ndarray) -> float:
        return piqe_score(_nss.rgb2gray(rgb))


register("piqe", PIQE)
