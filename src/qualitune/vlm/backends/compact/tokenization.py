"""The compact backend's tokenizer: SmolLM2's, with Qwen-VL's vision tokens and a chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from qualitune.vlm.backends.compact.gguf import load_decoder_tokenizer

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen-VL's chat template minus the default system turn, with a user turn's text rendered before
# its pictures: every item of a batch then shares the whole question as one token prefix, which
# scoring computes once per batch instead of once per item (see `qualitune.vlm.backends.compact`).
COMPACT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'text' or ('text' in content and 'image' not in content) %}"
    "{{ content['text'] }}{% endif %}{% endfor %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the vision tokens, the chat template and a pad token to SmolLM2's tokenizer (in place)."""
    tok.add_special_tokens(
        {"additional_special_tokens": list(VISION_TOKENS)}, replace_extra_special_tokens=False
    )
    tok.chat_template = COMPACT_CHAT_TEMPLATE
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer() -> PreTrainedTokenizerBase:
    """The compact backend's tokenizer, without building the model."""
    return prepare_tokenizer(load_decoder_tokenizer())
