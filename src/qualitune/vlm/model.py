"""Loading the VLM: the public entry points, dispatching to a backend by model name.

`qualitune.vlm.backends.backend_for` maps a name to its backend: `TINY_NAME` (a tiny random
Qwen2.5-VL for development, `backends.tiny`), `COMPACT_NAME` (EfficientNet-Lite0 + SmolLM2 on a
CPU, `backends.compact`), anything else a real Qwen2-VL / Qwen2.5-VL checkpoint (`backends.qwen`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qualitune.errors import QualituneError
from qualitune.vlm.backends import backend_for, backend_of
from qualitune.vlm.backends.compact import NAME as COMPACT_NAME
from qualitune.vlm.backends.qwen import model_class_for
from qualitune.vlm.backends.tiny import NAME as TINY_NAME
from qualitune.vlm.backends.tiny import QWEN_VOCAB_SIZE, TINY_EMBED_STD, tiny_config

__all__ = [
    "COMPACT_NAME",
    "QWEN_VOCAB_SIZE",
    "TINY_EMBED_STD",
    "TINY_NAME",
    "load_model",
    "load_tokenizer",
    "make_processor",
    "model_class_for",
    "resolve_dtype",
    "tiny_config",
]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A dtype name (`float32`/`fp32`, `bfloat16`/`bf16`, `float16`/`fp16`) as a `torch.dtype`;
    None, `"auto"` and `torch.dtype`s pass through."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise QualituneError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return `(model, tokenizer)` in eval mode.

    `COMPACT_NAME` assembles the compact backend from its offline pretrained parts (projector drawn
    from `seed`). `TINY_NAME` builds the tiny model with weights drawn from `torch.manual_seed(seed)`
    (the global RNG state is restored afterwards, so loading does not perturb a caller's
    randomness) and the offline tokenizer. Anything else is a local checkpoint folder or a cached
    hub id, loaded with the class its config names, SDPA attention and `trust_remote_code=False`.
    """
    model, tokenizer = backend_for(name_or_path).load_model(
        name_or_path, dtype=resolve_dtype(dtype), seed=seed
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<|endoftext|>"
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer that `load_model(name_or_path)` returns, without loading the model."""
    tokenizer = backend_for(name_or_path).load_tokenizer(name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def make_processor(model: torch.nn.Module, min_pixels: int, max_pixels: int):
    """The image processor that goes with `model`: Qwen's patch processor with the pixel budget,
    or the compact backend's fixed-size one (which ignores the budget: its encoder takes one size)."""
    return backend_of(model).make_processor(model, min_pixels, max_pixels)
