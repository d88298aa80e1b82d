"""Model inputs for Qwen2-VL / Qwen2.5-VL without `Qwen2_5_VLProcessor`.

The processor cannot be built where torchvision is missing (its video half needs it), so this
module does its job by hand, the same way for a tiny model and a 7B checkpoint:

1. render the chat with the tokenizer's chat template (one `<|vision_start|><|image_pad|>
   <|vision_end|>` per image, or `...<|video_pad|>...` per video);
2. turn pixels into patches with `Qwen2VLImageProcessorPil` (images) or the same processor plus a
   temporal stacking step that mirrors `Qwen2VLVideoProcessor.patchify` (videos);
3. expand each pad token to t*h*w / merge**2 copies, the number of merged vision patches the model
   will scatter into those positions;
4. tokenise, pad (left for scoring, so the answer position is the last column), and add
   `mm_token_type_ids`, without which transformers 5 cannot build the 3-D M-RoPE positions.

A video can enter as separate images (one image block per frame; the IOVQA recipe of 1-2
frames) or as one video grid (frames stacked in pairs along time, `pixel_values_videos`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qualitune.errors import QualituneError
from qualitune.vlm.unwrap import unwrap_model

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
IGNORE_INDEX = -100
"""Label value that cross-entropy skips (prompt, padding)."""
TRAINING_KEYS = frozenset({"value_mask"})
"""Batch keys only the trainer reads; `model_inputs` drops them (labels pass: the model can use them)."""

# Per-item media: one image, or a list of frames (a video sampled by `qualitune.media`).
MediaItem = Image.Image | Sequence[Image.Image]
VideoMode = Literal["frames", "video"]


def make_image_processor(
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
    *,
    patch_size: int = 14,
    merge_size: int = 2,
    temporal_patch_size: int = 2,
) -> Qwen2VLImageProcessorPil:
    """The Qwen2-VL image processor (PIL backend) with a pixel budget.

    The defaults of the other settings (bicubic resize, CLIP mean/std, patch 14, merge 2) are those
    of Qwen2-VL and Qwen2.5-VL's `preprocessor_config.json`, so the same object serves real
    checkpoints. `min_pixels`/`max_pixels` bound the resized area and hence the number of image
    tokens: (H/28)*(W/28) per image.
    """
    if min_pixels < 1 or max_pixels < min_pixels:
        raise QualituneError(
            f"need 1 <= min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}"
        )
    return Qwen2VLImageProcessorPil(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
    )


def build_messages(
    question: str, *, n_images: int = 1, n_videos: int = 0, system: str | None = None
) -> list[dict]:
    """Chat messages with the vision blocks first, then the question (Qwen's own examples' order)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content += [{"type": "video"} for _ in range(n_videos)]
    content.append({"type": "text", "text": question})
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return messages


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    question: str,
    *,
    n_images: int = 1,
    n_videos: int = 0,
    system: str | None = None,
) -> str:
    """Render the chat up to and including `<|im_start|>assistant\\n`, pads not yet expanded."""
    if not getattr(tokenizer, "chat_template", None):
        raise QualituneError(
            "tokenizer has no chat template; load it with qualitune.vlm.tokenizer.load_qwen_tokenizer"
        )
    return tokenizer.apply_chat_template(
        build_messages(question, n_images=n_images, n_videos=n_videos, system=system),
        tokenize=False,
        add_generation_prompt=True,
    )


def expand_vision_tokens(text: str, pad: str, counts: Sequence[int]) -> str:
    """Replace the i-th `pad` in `text` by `counts[i]` copies (one per merged vision patch)."""
    parts = text.split(pad)
    if len(parts) - 1 != len(counts):
        raise QualituneError(
            f"prompt has {len(parts) - 1} {pad} placeholders but {len(counts)} visual inputs"
        )
    out = [parts[0]]
    for count, rest in zip(counts, parts[1:], strict=True):
        out.append(pad * int(count))
        out.append(rest)
    return "".join(out)


def _frames_of(item: MediaItem) -> list[Image.Image]:
    if isinstance(item, Image.Image):
        return [item]
    frames = list(item)
    if not frames or not all(isinstance(f, Image.Image) for f in frames):
        raise QualituneError("each media item must be a PIL image or a non-empty list of PIL frames")
    return frames


def video_patches(
    frames: Sequence[Image.Image], image_processor: Qwen2VLImageProcessorPil
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Patchify frames as one video: `(t*h*w, C*tp*p*p)` patches and the grid `(t, h, w)`.

    Each frame goes through the image processor (same resize and normalisation as images), which
    emits every patch repeated `tp` times along time. Taking one copy per frame and stacking
    consecutive frames along that axis gives exactly `Qwen2VLVideoProcessor.patchify`'s layout
    (rows ordered t, h/m, w/m, m, m; columns C, tp, p, p). An odd frame count is padded by
    repeating the last frame, as that processor does.
    """
    tp = int(image_processor.temporal_patch_size)
    p = int(image_processor.patch_size)
    sizes = {f.size for f in frames}
    if len(sizes) != 1:
        raise QualituneError(f"video frames must share one size, got {sorted(sizes)}")
    frames = list(frames)
    frames += [frames[-1]] * (-len(frames) % tp)
    out = image_processor(images=frames, return_tensors="np")
    grid = np.asarray(out["image_grid_thw"])
    n_patches = int(grid[0, 1] * grid[0, 2])
    per_frame = np.asarray(out["pixel_values"], dtype=np.float32).reshape(len(frames), n_patches, 3, tp, p, p)
    one_copy = per_frame[:, :, :, 0]  # (F, N, C, p, p)
    grid_t = len(frames) // tp
    stacked = one_copy.reshape(grid_t, tp, n_patches, 3, p, p).transpose(
        0, 2, 3, 1, 4, 5
    )  # (T, N, C, tp, p, p)
    patches = np.ascontiguousarray(stacked.reshape(grid_t * n_patches, 3 * tp * p * p))
    return patches, (grid_t, int(grid[0, 1]), int(grid[0, 2]))


Answer = str | tuple[str, str, str]
"""A training answer: plain text, or `(prefix, value, suffix)` where `value` is the part a
value-only loss (IOVQA's integer-only mask) keeps, e.g. `("", "35", "")` or
`("The quality of the image is", " good", ".")`. The parts are tokenised separately, so the value's
tokens are known exactly rather than guessed from character offsets."""


def _split_answer(answer: Answer) -> tuple[str, str, str]:
    if isinstance(answer, str):
        return "", answer, ""
    if len(answer) != 3 or not all(isinstance(x, str) for x in answer):
        raise QualituneError(f"an answer must be a string or a (prefix, value, suffix) tuple, got {answer!r}")
    return answer[0], answer[1], answer[2]


def encode_batch(
    items: Sequence[MediaItem | None],
    prompts: str | Sequence[str],
    answers: Sequence[Answer] | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: Qwen2VLImageProcessorPil,
    padding_side: Literal["left", "right"] = "left",
    video_mode: VideoMode = "frames",
    seconds_per_frame: float | Sequence[float] = 1.0,
    system: str | None = None,
    answer_suffix: str = "<|im_end|>",
    assistant_prefix: str | Sequence[str] = "",
) -> dict[str, torch.Tensor]:
    """Tokenise a batch of (media, question[, answer]) into model inputs.

    Returns `input_ids`, `attention_mask`, `mm_token_type_ids`, and `pixel_values` +
    `image_grid_thw` and/or `pixel_values_videos` + `video_grid_thw` + `second_per_grid_ts`
    (Qwen2.5-VL's temporal spacing: `temporal_patch_size * seconds_per_frame`). With `answers`,
    the answer text plus `answer_suffix` follows each prompt and `labels` copies those ids, with
    IGNORE_INDEX on prompt and padding positions; `value_mask` (bool) marks the tokens of each
    answer's value part (see `Answer`).

    A single image item is always an image; a list of frames follows `video_mode`: "frames" makes
    one image block per frame, "video" one video grid; `None` is a text-only turn (two-stage
    reasoning's second stage sees only a description). Left padding (default) puts every row's
    answer position in the last column, which scoring relies on; use "right" for training if you
    prefer, the masks are explicit either way. `assistant_prefix` is text the assistant turn starts
    with at scoring time (e.g. "The quality of the image is"), so the next token is the value.
    """
    n = len(items)
    if n == 0:
        raise QualituneError("encode_batch needs at least one item")
    questions = [prompts] * n if isinstance(prompts, str) else list(prompts)
    if len(questions) != n:
        raise QualituneError(f"got {n} media items but {len(questions)} prompts")
    if answers is not None and len(answers) != n:
        raise QualituneError(f"got {n} media items but {len(answers)} answers")
    if video_mode not in ("frames", "video"):
        raise QualituneError(f"video_mode must be 'frames' or 'video', got {video_mode!r}")
    if padding_side not in ("left", "right"):
        raise QualituneError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    prefixes = [assistant_prefix] * n if isinstance(assistant_prefix, str) else list(assistant_prefix)
    if len(prefixes) != n:
        raise QualituneError(f"got {n} media items but {len(prefixes)} assistant prefixes")
    spf = (
        [float(seconds_per_frame)] * n
        if isinstance(seconds_per_frame, int | float)
        else list(seconds_per_frame)
    )
    if len(spf) != n:
        raise QualituneError(f"got {n} media items but {len(spf)} seconds_per_frame values")
    merge = int(image_processor.merge_size) ** 2
    tp = int(image_processor.temporal_patch_size)

    image_patches: list[np.ndarray] = []
    image_grids: list[np.ndarray] = []
    video_patch_list: list[np.ndarray] = []
    video_grids: list[tuple[int, int, int]] = []
    video_seconds: list[float] = []
    sequences: list[list[int]] = []
    label_rows: list[list[int]] = []
    value_rows: list[list[bool]] = []
    for i, (item, question) in enumerate(zip(items, questions, strict=True)):
        if item is None:
            text = build_prompt(tokenizer, question, n_images=0, system=system)
        elif video_mode == "video" and not isinstance(item, Image.Image):
            frames = _frames_of(item)
            patches, grid = video_patches(frames, image_processor)
            video_patch_list.append(patches)
            video_grids.append(grid)
            video_seconds.append(tp * spf[i])
            text = build_prompt(tokenizer, question, n_images=0, n_videos=1, system=system)
            text = expand_vision_tokens(text, VIDEO_PAD, [grid[0] * grid[1] * grid[2] // merge])
        else:
            frames = _frames_of(item)
            out = image_processor(images=frames, return_tensors="np")
            grids = np.asarray(out["image_grid_thw"], dtype=np.int64)
            image_patches.append(np.asarray(out["pixel_values"], dtype=np.float32))
            image_grids.append(grids)
            text = build_prompt(tokenizer, question, n_images=len(frames), system=system)
            text = expand_vision_tokens(text, IMAGE_PAD, [int(g.prod()) // merge for g in grids])
        prompt_ids = tokenizer(text + prefixes[i], add_special_tokens=False)["input_ids"]
        if answers is None:
            sequences.append(prompt_ids)
            continue
        pre, value, post = _split_answer(answers[i])
        parts = [
            tokenizer(t, add_special_tokens=False)["input_ids"] if t else []
            for t in (pre, value, post + answer_suffix)
        ]
        if not parts[1]:
            raise QualituneError(f"answer {answers[i]!r} of item {i} has an empty value")
        answer_ids = parts[0] + parts[1] + parts[2]
        sequences.append(prompt_ids + answer_ids)
        label_rows.append([IGNORE_INDEX] * len(prompt_ids) + answer_ids)
        value_rows.append(
            [False] * (len(prompt_ids) + len(parts[0])) + [True] * len(parts[1]) + [False] * len(parts[2])
        )

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise QualituneError("tokenizer has no pad token; set tokenizer.pad_token = '<|endoftext|>'")
    width = max(len(s) for s in sequences)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    value_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        input_ids[i, cols] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, cols] = 1
        if answers is not None:
            labels[i, cols] = torch.tensor(label_rows[i], dtype=torch.long)
            value_mask[i, cols] = torch.tensor(value_rows[i], dtype=torch.bool)

    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    video_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    mm_types = torch.zeros_like(input_ids, dtype=torch.int32)
    mm_types[(input_ids == image_id) & (attention_mask == 1)] = 1
    mm_types[(input_ids == video_id) & (attention_mask == 1)] = 2

    batch: dict[str, torch.Tensor] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mm_token_type_ids": mm_types,
    }
    if image_patches:
        batch["pixel_values"] = torch.from_numpy(np.concatenate(image_patches, axis=0))
        batch["image_grid_thw"] = torch.from_numpy(np.concatenate(image_grids, axis=0))
    if video_patch_list:
        batch["pixel_values_videos"] = torch.from_numpy(np.concatenate(video_patch_list, axis=0))
        batch["video_grid_thw"] = torch.tensor(video_grids, dtype=torch.long)
        batch["second_per_grid_ts"] = torch.tensor(video_seconds, dtype=torch.float32)
    if answers is not None:
        batch["labels"] = labels
        batch["value_mask"] = value_mask
    return batch


def model_inputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch on the model's device/dtype, without keys the model class does not take.

    Qwen2-VL has no `second_per_grid_ts` (its video positions are not time-scaled); pixel tensors
    follow the model's floating dtype so a bf16 checkpoint gets bf16 pixels.
    """
    import inspect

    params = inspect.signature(type(unwrap_model(model)).forward).parameters
    param = next(iter(model.parameters()))
    out: dict[str, torch.Tensor] = {}
    for key, value in batch.items():
        if key in TRAINING_KEYS or (key == "second_per_grid_ts" and key not in params):
            continue
        value = value.to(param.device)
        if key in ("pixel_values", "pixel_values_videos"):
            value = value.to(param.dtype)
        out[key] = value
    return out
