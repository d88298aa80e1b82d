"""Training helper: the projector's data-dependent standardisation, before the first step."""

from __future__ import annotations

import torch

from qualitune.media import load_media
from qualitune.vlm.unwrap import unwrap_model


def standardise_projector(model: torch.nn.Module, processor, paths: list[str], max_items: int = 512) -> bool:
    """Set the projector's per-feature standardisation from (up to `max_items`) training photos,
    once: a projector already standardised (or trained, or loaded) is left alone. Returns whether it
    ran. Called by `qualitune.training.train` before the first step; videos use their first frame."""
    merger = unwrap_model(model).model.visual.merger
    identity = bool((merger.global_shift == 0).all() and (merger.global_gain == 1).all())
    if not identity or not any(p.requires_grad for p in merger.parameters()) or not paths:
        return False
    step = max(1, len(paths) // max_items)
    chosen = list(paths)[::step][:max_items]
    visual = unwrap_model(model).model.visual
    glob, grid = [], []
    for start in range(0, len(chosen), 32):
        images = [load_media(path, n_frames=1)[0] for path in chosen[start : start + 32]]
        pixels = torch.from_numpy(processor(images)["pixel_values"])
        with torch.no_grad():
            g, m = visual.features(pixels)
        glob.append(g)
        grid.append(m)
    merger.standardise(torch.cat(glob), torch.cat(grid))
    return True
