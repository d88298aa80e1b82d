"""KADID-10k's published facts, shared by its reader and the demo dataset.

`qualitune.ingest.kadid10k` reads KADID-10k's own release; `qualitune.demo` borrows KADID's human
DMOS per distortion type and level. Both need the dataset's 25 distortion types and the naming of
its distorted images (`I<ref>_<type>_<level>.png`), kept here once.
"""

from __future__ import annotations

import re

# (KADID type id, our slug, the name used in the KADID-10k paper), in KADID's order. The slugs are
# those of `qualitune.demo.distortions` and of params.yaml's `demo.distortions`.
KADID_TYPES: tuple[tuple[int, str, str], ...] = (
    (1, "gaussian_blur", "gaussian blur"),
    (2, "lens_blur", "lens blur"),
    (3, "motion_blur", "motion blur"),
    (4, "color_diffusion", "color diffusion"),
    (5, "color_shift", "color shift"),
    (6, "color_quantization", "color quantization"),
    (7, "color_saturation_1", "color saturation 1"),
    (8, "color_saturation_2", "color saturation 2"),
    (9, "jpeg2000", "jpeg2000"),
    (10, "jpeg", "jpeg"),
    (11, "white_noise", "white noise"),
    (12, "white_noise_color_component", "white noise in color component"),
    (13, "impulse_noise", "impulse noise"),
    (14, "multiplicative_noise", "multiplicative noise"),
    (15, "denoise", "denoise"),
    (16, "brighten", "brighten"),
    (17, "darken", "darken"),
    (18, "mean_shift", "mean shift"),
    (19, "jitter", "jitter"),
    (20, "non_eccentricity_patch", "non-eccentricity patch"),
    (21, "pixelate", "pixelate"),
    (22, "quantization", "quantization"),
    (23, "color_block", "color block"),
    (24, "high_sharpen", "high sharpen"),
    (25, "contrast_change", "contrast change"),
)

# The `distortion_name` the KADID-10k reader writes, by type id: the slugs above, except that the
# two saturation types are named by the colour space KADID's generator changes (HSV, Lab). Kept as
# they are so that manifests already written do not change.
KADID_DISTORTIONS: dict[int, str] = {k: slug for k, slug, _ in KADID_TYPES} | {
    7: "color_saturation_hsv",
    8: "color_saturation_lab",
}

# A distorted image's file name: reference ("I01"), type id, level, extension (optional).
KADID_NAME = re.compile(r"^(I\d+)_(\d+)_(\d+)(\.\w+)?$", re.IGNORECASE)
