"""The model backends behind one name -> backend lookup.

A backend is a module (or package) with:

- `NAME`: the backend's name; for `tiny` and `compact` also the model name that selects it;
- `load_model(name_or_path, *, dtype, seed) -> (model, tokenizer)`: `dtype` already resolved to a
  `torch.dtype`, `"auto"` or None;
- `load_tokenizer(name_or_path) -> tokenizer`: the backend supplies its own tokenizer;
- `make_processor(model, min_pixels, max_pixels)`: the image processor that goes with a model;
- `owns(model) -> bool`: whether a loaded model (PEFT-wrapped or not) is one of the backend's.

Backends:

- `qwen`: real Qwen2-VL / Qwen2.5-VL checkpoints (a local folder or a cached hub id), the fallback
  for any name no other backend claims;
- `tiny`: the tiny random Qwen2.5-VL for development and tests (`tiny.NAME`);
- `compact`: EfficientNet-Lite0 + SmolLM2-135M on a CPU (`compact.NAME`).

The model names are recorded as `base_model` in saved scorer folders (`qualitune_scorer.json`) and
registered MLflow models: renaming one orphans every scorer trained on it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from qualitune.vlm.backends import compact, qwen, tiny

Backend = ModuleType
"""A backend is a module with the interface above."""

BY_NAME: dict[str, Backend] = {tiny.NAME: tiny, compact.NAME: compact}
"""Model names that select a backend other than `qwen` (the fallback for paths and hub ids)."""

FALLBACK: Backend = qwen


def backend_for(name_or_path: str | Path) -> Backend:
    """The backend that loads `name_or_path`: a registered model name's, else `qwen` (a checkpoint)."""
    return BY_NAME.get(str(name_or_path), FALLBACK)


def backend_of(model: torch.nn.Module) -> Backend:
    """The backend a loaded model belongs to (the first registered one that owns it, else `qwen`)."""
    for backend in BY_NAME.values():
        if backend.owns(model):
            return backend
    return FALLBACK
