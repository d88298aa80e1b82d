"""The offline Qwen2.5-VL tokenizer: real special-token ids, digit splitting, chat format, cache."""

from __future__ import annotations

import pytest

from qualitune.vlm.tokenizer import QWEN25_VL_ADDED_TOKENS, load_qwen_tokenizer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokcache")


@pytest.fixture(scope="module")
def tok(cache_dir):
    return load_qwen_tokenizer(cache_dir=cache_dir)


def test_special_token_ids_match_qwen25_vl(tok):
    expected = {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<|object_ref_start|>": 151646,
        "<|vision_start|>": 151652,
        "<|vision_end|>": 151653,
        "<|vision_pad|>": 151654,
        "<|image_pad|>": 151655,
        "<|video_pad|>": 151656,
        "<|file_sep|>": 151664,
    }
    for text, tid in expected.items():
        assert tok.convert_tokens_to_ids(text) == tid
    assert len(tok) == 151665 == QWEN25_VL_ADDED_TOKENS[-1][1] + 1
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643
    assert tok.eos_token_id == 151645
    # a special token inside text stays one token
    assert tok("a<|image_pad|><|image_pad|>b", add_special_tokens=False)["input_ids"][1:3] == [151655, 151655]


def test_digits_tokenise_one_per_token(tok):
    ids = tok("35", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    assert (
        ids
        == tok("3", add_special_tokens=False)["input_ids"] + tok("5", add_special_tokens=False)["input_ids"]
    )
    assert [tok.decode([i]) for i in tok("2024", add_special_tokens=False)["input_ids"]] == [
        "2",
        "0",
        "2",
        "4",
    ]
    # known ids of the Qwen2 BPE (shared with cl100k for these)
    assert ids == [18, 20]


def test_round_trip_decode(tok):
    text = "The image quality is 4.5/5 — très bon, 画质很好!\n\tend"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.tokenize(" good") == ["Ġgood"]


def test_chat_template_renders_qwen_format(tok):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Rate it."}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Rate it.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    video = [{"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "video"}]}]
    assert tok.apply_chat_template(video, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
    )


def test_cached_load_equals_build(tok, cache_dir):
    assert any(p.name.startswith("qwen25vl-tokenizer-") for p in cache_dir.iterdir())
    again = load_qwen_tokenizer(cache_dir=cache_dir)
    text = "Score: 42 <|vision_start|>x<|vision_end|> ok"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.chat_template == tok.chat_template
    assert again.eos_token_id == tok.eos_token_id and again.pad_token_id == tok.pad_token_id
