"""The demo's images: reference crops of the packaged photos and their KADID-style distortions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from qualitune.demo import distortions as dist
from qualitune.demo.kadid_table import PRISTINE, kadid_mos, load_kadid_table
from qualitune.demo.sources import PHOTOS, _rng, photo_path


def reference_crops(crop_size: int, crops_per_image: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(reference id, HxWx3 crop) for every packaged photo.

    A photo whose short side exceeds 3 crops is first downscaled to 3 crops (area filter, so the
    reference gets sharper, not softer); crops are then picked among the non-overlapping tiles of a
    centred grid, so no two references share pixels.
    """
    out = []
    for name in PHOTOS:
        with Image.open(photo_path(name)) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[:2]
        scale = min(1.0, 3 * crop_size / min(h, w))
        if scale < 1.0:
            arr = cv2.resize(arr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            h, w = arr.shape[:2]
        rows, cols = h // crop_size, w // crop_size
        y0, x0 = (h - rows * crop_size) // 2, (w - cols * crop_size) // 2
        tiles = [(r, c) for r in range(rows) for c in range(cols)]
        stem = Path(name).stem
        pick = _rng(seed, stem).permutation(len(tiles))[: min(crops_per_image, len(tiles))]
        for t in sorted(int(i) for i in pick):
            r, c = tiles[t]
            y, x = y0 + r * crop_size, x0 + c * crop_size
            out.append((f"{stem}_c{t}", np.ascontiguousarray(arr[y : y + crop_size, x : x + crop_size])))
    return out


def crop_levels(
    crop_index: int, kinds: Sequence[str], levels: Sequence[int], per_crop: int
) -> dict[str, tuple[int, ...]]:
    """kind -> the levels crop `crop_index` gets: all of them (`per_crop` 0), or `per_crop` evenly
    spaced ones, rotated by crop and kind so that across crops every (kind, level) pair is used
    about equally often and each crop spans the severity range."""
    n = len(levels)
    if not per_crop or per_crop >= n:
        return {kind: tuple(levels) for kind in kinds}
    out = {}
    for k, kind in enumerate(kinds):
        start = crop_index + k
        picks = sorted({(start + round(j * n / per_crop)) % n for j in range(per_crop)})
        out[kind] = tuple(levels[i] for i in picks)
    return out


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _image_task(
    ref: str, crop: np.ndarray, plan: Mapping[str, Sequence[int]], seed: int, img_dir: str
) -> list[dict]:
    """Write one reference crop and all its distorted versions; return their label rows."""
    table = load_kadid_table()
    out_dir = Path(img_dir)
    mos, std = kadid_mos(table, PRISTINE, 0)
    _save_png(crop, out_dir / f"{ref}.png")
    rows = [
        dict(
            name=f"{ref}.png",
            mos=mos,
            mos_std=std,
            media="image",
            distortion=PRISTINE,
            level=0,
            reference=ref,
            kadid_type=PRISTINE,
        )
    ]
    for kind, levels in plan.items():
        for level in levels:
            name = f"{ref}_{kind}_{level}.png"
            _save_png(dist.apply(crop, kind, level, _rng(seed, name)), out_dir / name)
            mos, std = kadid_mos(table, kind, level)
            rows.append(
                dict(
                    name=name,
                    mos=mos,
                    mos_std=std,
                    media="image",
                    distortion=kind,
                    level=level,
                    reference=ref,
                    kadid_type=kind,
                )
            )
    return rows
