"""Loading the VLM: a real Qwen2-VL / Qwen2.5-VL checkpoint, or a tiny random one for development.

The tiny model is the real `Qwen2_5_VLForConditionalGeneration` architecture shrunk to a 64-wide,
2-layer decoder and a 2-block vision tower, with seeded random weights. It keeps the full Qwen
vocabulary (151,936 rows x 64 = ~10 M parameters) and the real special-token ids, so every code
path (prompt building, image-token expansion, M-RoPE positions, digit-by-digit scoring, LoRA
targets) is exactly the one a 7B checkpoint takes; only the numbers it produces are meaningless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from qualitune.vlm.tokenizer import load_qwen_tokenizer

TINY_NAME = "tiny-qwen2.5-vl"
"""Model name that selects the tiny random Qwen2.5-VL (no download, builds in well under a second)."""

COMPACT_NAME = "compact-smollm2-135m-effnet-lite0"
"""Model name that selects the compact CPU backend (`qualitune.vlm.compact`): pretrained
EfficientNet-Lite0 + SmolLM2-135M-Instruct + a trained projector."""

TINY_EMBED_STD = 0.5
"""Init std of the tiny model's tied embedding / LM head (see `load_model`)."""

QWEN_VOCAB_SIZE = 151936
"""Embedding rows of every Qwen2.5-VL checkpoint (151,665 tokens padded to a multiple of 128)."""

_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
}


def tiny_config(vocab_size: int = QWEN_VOCAB_SIZE) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config small enough for CPU tests, with the real token ids and patch geometry.

    Patch size 14, spatial merge 2 and temporal patch 2 are those of the real model, so an image
    becomes the same number of `<|image_pad|>` tokens as it would for Qwen2.5-VL-7B.
    """
    hidden = 64
    text = {
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "out_hidden_size": hidden,
        "fullatt_block_indexes": [1],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=True,
    )


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
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
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)} or 'auto'")
    return names[dtype]


def model_class_for(config: Any) -> type[PreTrainedModel]:
    """The generation class for a config's `model_type` (Qwen2-VL or Qwen2.5-VL)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _CLASSES:
        raise ValueError(
            f"unsupported model_type {model_type!r}: qualitune scores with {sorted(_CLASSES)} models"
        )
    return _CLASSES[model_type]


def _match_projector_scale(model: PreTrainedModel, target_std: float) -> None:
    """Rescale the tiny model's projector so image tokens enter the decoder at the text embeddings'
    scale, as pretraining leaves them. At random init they come out ~20x smaller, so the decoder
    all but ignores the image and no recipe can learn image-dependent answers."""
    visual = model.model.visual
    cfg = visual.config
    side = 4 * cfg.spatial_merge_size  # a 4x4-merged-patch test image
    n = side * side
    pixels = torch.randn(n, 3 * cfg.temporal_patch_size * cfg.patch_size**2)
    grid = torch.tensor([[1, side, side]])
    out = visual(pixels, grid_thw=grid)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    std = float(torch.as_tensor(feats).float().std())
    last = visual.merger.mlp[-1]
    last.weight.mul_(target_std / max(std, 1e-8))
    if last.bias is not None:
        last.bias.mul_(target_std / max(std, 1e-8))


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return `(model, tokenizer)` in eval mode.

    `COMPACT_NAME` assembles the compact backend from its offline pretrained parts (projector drawn
    from `seed`). `TINY_NAME` builds the tiny model with weights drawn from `torch.manual_seed(seed)` (the global
    RNG state is restored afterwards, so loading does not perturb a caller's randomness) and the
    offline tokenizer. Anything else is a local checkpoint folder or a cached hub id, loaded with the
    class its config names, SDPA attention and `trust_remote_code=False`.
    """
    torch_dtype = _resolve_dtype(dtype)
    name = str(name_or_path)
    if name == COMPACT_NAME:
        from qualitune.vlm.compact import build_compact

        model, tokenizer = build_compact(seed=seed)
    elif name == TINY_NAME:
        tokenizer = load_qwen_tokenizer(None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration._from_config(
                tiny_config(),
                attn_implementation="sdpa",
                dtype=torch_dtype if torch_dtype != "auto" else None,
            )
            # The (tied) embedding at the usual std 0.02 caps every logit at |h| * 0.02 * sqrt(64)
            # ~ 1.3 after the final norm: no token can ever get much probability, and adapters that
            # cannot rescale the frozen norm (LoRA, encoder-only) could never learn an answer.
            # A pretrained model's embeddings are far larger; this std gives logits of a few nats.
            with torch.no_grad():
                model.get_input_embeddings().weight.normal_(0.0, TINY_EMBED_STD)
                _match_projector_scale(model, TINY_EMBED_STD)
    else:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
        cls = model_class_for(config)
        model = cls.from_pretrained(
            name,
            dtype=torch_dtype if torch_dtype is not None else "auto",
            attn_implementation="sdpa",
            trust_remote_code=False,
        )
        tokenizer = load_qwen_tokenizer(name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = "<|endoftext|>"
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def make_processor(model: torch.nn.Module, min_pixels: int, max_pixels: int):
    """The image processor that goes with `model`: Qwen's patch processor with the pixel budget,
    or the compact backend's fixed-size one (which ignores the budget: its encoder takes one size)."""
    from qualitune.vlm.compact import CompactImageProcessor, is_compact
    from qualitune.vlm.inputs import _unwrap, make_image_processor

    if is_compact(model):
        cfg = _unwrap(model).config
        return CompactImageProcessor(cfg.image_size, cfg.n_visual_tokens)
    return make_image_processor(min_pixels, max_pixels)
