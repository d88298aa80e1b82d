"""Building Qwen2.5-VL inputs without the processor: token counts, layouts, labels, forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qualitune.vlm.inputs import (
    IGNORE_INDEX,
    encode_batch,
    expand_vision_tokens,
    make_image_processor,
    model_inputs,
    video_patches,
)
from qualitune.vlm.model import TINY_NAME, load_model, tiny_config

IMAGE_ID, VIDEO_ID = 151655, 151656


def _img(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY_NAME)


@pytest.fixture(scope="module")
def proc():
    return make_image_processor(56 * 56, 112 * 112)


def test_tiny_model_is_deterministic_and_full_vocab(tiny):
    model, _ = tiny
    again, _ = load_model(TINY_NAME)
    assert model.config.text_config.vocab_size == 151936
    assert model.config.image_token_id == IMAGE_ID and model.config.video_token_id == VIDEO_ID
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other, _ = load_model(TINY_NAME, seed=1)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)
    assert tiny_config().vision_config.out_hidden_size == tiny_config().text_config.hidden_size


def test_image_pad_count_equals_merged_patches(tiny, proc):
    _, tok = tiny
    items = [_img(60, 80, 0), _img(112, 112, 1), _img(56, 200, 2)]
    batch = encode_batch(items, "Rate.", tokenizer=tok, image_processor=proc)
    grids = batch["image_grid_thw"]
    assert grids.shape == (3, 3) and (grids[:, 0] == 1).all()
    per_row = (batch["input_ids"] == IMAGE_ID).sum(dim=1)
    assert per_row.tolist() == (grids.prod(dim=1) // 4).tolist()
    assert batch["pixel_values"].shape[0] == int(grids.prod(dim=1).sum())
    assert batch["pixel_values"].shape[1] == 3 * 2 * 14 * 14
    # left padding: every row ends with the same generation prompt
    assert batch["attention_mask"][:, -1].all()
    assert (batch["mm_token_type_ids"] == 1).sum() == per_row.sum()


def test_expand_vision_tokens_checks_counts():
    assert expand_vision_tokens("a<p>b<p>", "<p>", [2, 1]) == "a<p><p>b<p>"
    with pytest.raises(ValueError, match="placeholders"):
        expand_vision_tokens("a<p>b", "<p>", [1, 1])


def test_labels_mask_prompt_and_padding(tiny, proc):
    _, tok = tiny
    batch = encode_batch(
        [_img(56, 56, 3), _img(112, 112, 4)],
        ["Rate.", "Rate this one."],
        ["35", "7"],
        tokenizer=tok,
        image_processor=proc,
        padding_side="right",
    )
    labels = batch["labels"]
    for row, answer in enumerate(["35", "7"]):
        kept = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert tok.decode(kept) == answer + "<|im_end|>"
        # the supervised tokens are the last real tokens of the row
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, n - len(kept) : n].tolist() == kept
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_video_patches_mirror_video_processor_layout(proc):
    f0, f1 = _img(112, 112, 5), _img(112, 112, 6)
    patches, (t, h, w) = video_patches([f0, f1, f0], proc)
    assert (t, h, w) == (2, 8, 8)  # 3 frames padded to 4 by repeating the last
    assert patches.shape == (t * h * w, 3 * 2 * 14 * 14)
    single0 = proc(images=[f0], return_tensors="np")["pixel_values"].reshape(64, 3, 2, 14, 14)
    single1 = proc(images=[f1], return_tensors="np")["pixel_values"].reshape(64, 3, 2, 14, 14)
    vid = patches.reshape(t, 64, 3, 2, 14, 14)
    # temporal group 0 holds frames (f0, f1) along the tp axis; group 1 holds (f0, f0 repeated)
    np.testing.assert_array_equal(vid[0, :, :, 0], single0[:, :, 0])
    np.testing.assert_array_equal(vid[0, :, :, 1], single1[:, :, 0])
    np.testing.assert_array_equal(vid[1], single0)  # a still pair equals the image's own patches
    with pytest.raises(ValueError, match="one size"):
        video_patches([f0, _img(56, 56, 7)], proc)


@pytest.mark.parametrize("mode", ["images", "frames", "video"])
def test_forward_accepts_batch(tiny, proc, mode):
    model, tok = tiny
    clip = [_img(112, 112, 8), _img(112, 112, 9)]
    items = [_img(80, 60, 10), clip] if mode != "images" else [_img(80, 60, 10), _img(112, 140, 11)]
    batch = encode_batch(
        items,
        "Rate.",
        ["30", "40"],
        tokenizer=tok,
        image_processor=proc,
        video_mode="video" if mode == "video" else "frames",
    )
    if mode == "video":
        assert batch["video_grid_thw"].tolist() == [[1, 8, 8]]
        assert (batch["input_ids"] == VIDEO_ID).sum() == 16
        assert batch["second_per_grid_ts"].tolist() == [2.0]
    if mode == "frames":
        assert batch["image_grid_thw"].shape[0] == 3  # one image + two frames as images
    with torch.no_grad():
        out = model(**model_inputs(model, batch))
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.loss)


def test_user_errors_are_value_errors(tiny, proc):
    _, tok = tiny
    with pytest.raises(ValueError, match="prompts"):
        encode_batch([_img(56, 56, 0)], ["a", "b"], tokenizer=tok, image_processor=proc)
    with pytest.raises(ValueError, match="video_mode"):
        encode_batch([_img(56, 56, 0)], "a", tokenizer=tok, image_processor=proc, video_mode="clip")
    with pytest.raises(ValueError, match="min_pixels"):
        make_image_processor(100, 10)


def test_checkpoint_folder_takes_the_from_pretrained_path(tiny, tmp_path):
    """A saved checkpoint (as a real Qwen2.5-VL folder) loads through AutoConfig/from_pretrained."""
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), dtype="float32")
    assert type(loaded) is type(model)
    assert loaded.config._attn_implementation == "sdpa"
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert loaded_tok("35 <|image_pad|>")["input_ids"] == tok("35 <|image_pad|>")["input_ids"]
