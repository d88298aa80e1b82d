"""The `tiny` backend: a tiny random Qwen2.5-VL for development and tests.

The tiny model is the real `Qwen2_5_VLForConditionalGeneration` architecture shrunk to a 64-wide,
2-layer decoder and a 2-block vision tower, with seeded random weights. It keeps the full Qwen
vocabulary (151,936 rows x 64 = ~10 M parameters) and the real special-token ids, so every code
path (prompt building, image-token expansion, M-RoPE positions, digit-by-digit scoring, LoRA
targets) is exactly the one a 7B checkpoint takes; only the numbers it produces are meaningless.
Its tokenizer is the offline Qwen2.5-VL build (`qualitune.vlm.tokenizer`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from qualitune.vlm.backends import qwen
from qualitune.vlm.tokenizer import load_qwen_tokenizer

NAME = "tiny-qwen2.5-vl"
"""Model name that selects the tiny random Qwen2.5-VL (no download, builds in well under a second).
Recorded as `base_model` in scorer folders: keep it stable."""

TINY_EMBED_STD = 0.5
"""Init std of the tiny model's tied embedding / LM head (see `load_model`)."""

QWEN_VOCAB_SIZE = 151936
"""Embedding rows of every Qwen2.5-VL checkpoint (151,665 tokens padded to a multiple of 128)."""


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


def load_tokenizer(name_or_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The offline Qwen2.5-VL tokenizer (the tiny model keeps the real vocabulary and ids)."""
    return load_qwen_tokenizer(None)


def load_model(
    name_or_path: str | Path = NAME, *, dtype: torch.dtype | str | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The tiny model with weights drawn from `torch.manual_seed(seed)` (the global RNG state is
    restored afterwards, so loading does not perturb a caller's randomness), and its tokenizer."""
    tokenizer = load_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            tiny_config(),
            attn_implementation="sdpa",
            dtype=dtype if dtype != "auto" else None,
        )
        # The (tied) embedding at the usual std 0.02 caps every logit at |h| * 0.02 * sqrt(64)
        # ~ 1.3 after the final norm: no token can ever get much probability, and adapters that
        # cannot rescale the frozen norm (LoRA, encoder-only) could never learn an answer.
        # A pretrained model's embeddings are far larger; this std gives logits of a few nats.
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, TINY_EMBED_STD)
            _match_projector_scale(model, TINY_EMBED_STD)
    return model, tokenizer


def owns(model: torch.nn.Module) -> bool:
    """Always False: a loaded tiny model is a plain Qwen2.5-VL, so `backend_of` hands it to the
    `qwen` backend (whose image processor it shares)."""
    return False


make_processor = qwen.make_processor
"""Qwen's patch image processor: the tiny model keeps the real patch geometry."""
