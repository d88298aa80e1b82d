"""The `qwen` backend: real Qwen2-VL / Qwen2.5-VL checkpoints (a local folder or a cached hub id).

It is the fallback of `qualitune.vlm.backends.backend_for`: any name no other backend claims is
loaded as a checkpoint, with the class its config names, SDPA attention, `trust_remote_code=False`
and the checkpoint's own tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from qualitune.errors import QualituneError
from qualitune.vlm.inputs import make_image_processor
from qualitune.vlm.tokenizer import load_qwen_tokenizer
from qualitune.vlm.unwrap import unwrap_model

NAME = "qwen"
"""The backend's name (a checkpoint path or hub id selects it, not this string)."""

_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}


def model_class_for(config: Any) -> type[PreTrainedModel]:
    """The generation class for a config's `model_type` (Qwen2-VL or Qwen2.5-VL)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _CLASSES:
        raise QualituneError(
            f"unsupported model_type {model_type!r}: qualitune scores with {sorted(_CLASSES)} models"
        )
    return _CLASSES[model_type]


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer."""
    return load_qwen_tokenizer(str(name_or_path))


def load_model(
    name_or_path: str | Path, *, dtype: torch.dtype | str | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`(model, tokenizer)` of a checkpoint; `dtype` None loads as the checkpoint says (`auto`).
    `seed` is unused: a checkpoint's weights are what they are."""
    name = str(name_or_path)
    config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    cls = model_class_for(config)
    model = cls.from_pretrained(
        name,
        dtype=dtype if dtype is not None else "auto",
        attn_implementation="sdpa",
        trust_remote_code=False,
    )
    return model, load_tokenizer(name)


def owns(model: torch.nn.Module) -> bool:
    """Whether `model` is one of this backend's (the tiny model is a Qwen2.5-VL too)."""
    return isinstance(unwrap_model(model), tuple(_CLASSES.values()))


def make_processor(model: torch.nn.Module, min_pixels: int, max_pixels: int):
    """Qwen's patch image processor with the pixel budget."""
    return make_image_processor(min_pixels, max_pixels)
