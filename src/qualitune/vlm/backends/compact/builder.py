"""Assembling the compact VLM from its pretrained parts (`build_compact`)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from qualitune.vlm.backends.compact.configuration import CompactConfig
from qualitune.vlm.backends.compact.gguf import load_decoder
from qualitune.vlm.backends.compact.modeling import CompactVisual, CompactVLM
from qualitune.vlm.backends.compact.tokenization import prepare_tokenizer


def build_compact(
    *, seed: int = 0, image_size: int = 384, grid: int = 2, projector_hidden: int = 1024
) -> tuple[CompactVLM, PreTrainedTokenizerBase]:
    """Assemble the compact VLM: pretrained encoder and decoder, projector drawn from `seed`."""
    lm, tok = load_decoder()
    tok = prepare_tokenizer(tok)
    old = lm.get_input_embeddings().weight.shape[0]
    if len(tok) > old:
        lm.resize_token_embeddings(len(tok), mean_resizing=True)
    embed = lm.get_input_embeddings().weight
    embed_rms = float(embed.detach().pow(2).mean(-1).sqrt().mean())
    config = CompactConfig(
        lm_config=lm.config.to_dict(),
        image_size=image_size,
        grid=grid,
        projector_hidden=projector_hidden,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        tie_word_embeddings=bool(lm.config.tie_word_embeddings),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        visual = CompactVisual(config, embed_rms, lm.config.hidden_size)
    model = CompactVLM(config, lm, visual)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval(), tok
