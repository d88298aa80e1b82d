"""The Qwen2/2.5 tokenizer, offline.

Real checkpoints ship their own tokenizer and are loaded with `AutoTokenizer`. For the tiny
development model no hub download is possible, but the Qwen BPE vocabulary ships as
`qwen.tiktoken` inside the PyPI package `dashscope`: converting it with transformers' tiktoken
converter, the Qwen pre-tokenisation pattern (digits split one by one) and the Qwen2.5-VL special
tokens at their real ids gives a tokenizer whose ids match the real one. That matters because the
tiny model keeps the full-size vocabulary, so prompts, labels and score-token ids computed in
development are the ones a real Qwen2.5-VL checkpoint sees.

Converting the 151,643 ranks into BPE merges takes ~2.5 s; the result is saved once with
`save_pretrained` into a cache folder so later loads read the same `tokenizer.json` (and every
process sees byte-identical tokenizer files, which a model registry can record).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from qualitune import cache
from qualitune.errors import QualituneError

EMBEDDED = "qwen2.5-vl-offline"
"""Name that selects the tokenizer built from dashscope's `qwen.tiktoken` (also the default)."""

# Bump when the build below changes, so stale caches are not reused.
_BUILD_VERSION = "1"

# Qwen2's pre-tokenisation split: like cl100k's, but `\p{N}` alone (one digit per piece), which is
# why "35" tokenises as "3", "5" and integer labels are scored digit by digit.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (token, id, special) exactly as in Qwen/Qwen2.5-VL-7B-Instruct's tokenizer_config.json
# `added_tokens_decoder`; the ids follow the 151,643 BPE ranks contiguously.
QWEN25_VL_ADDED_TOKENS: tuple[tuple[str, int, bool], ...] = (
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
    ("<|object_ref_start|>", 151646, True),
    ("<|object_ref_end|>", 151647, True),
    ("<|box_start|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_start|>", 151652, True),
    ("<|vision_end|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|image_pad|>", 151655, True),
    ("<|video_pad|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
)

# The Qwen2-VL / Qwen2.5-VL chat template (the `chat_template` of the Instruct checkpoints).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tiktoken_path() -> Path:
    """Locate `qwen.tiktoken` inside the installed `dashscope` package without importing it."""
    spec = importlib.util.find_spec("dashscope")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / "resources" / "qwen.tiktoken"
        if candidate.is_file():
            return candidate
    raise QualituneError(
        "the offline Qwen tokenizer needs dashscope's resources/qwen.tiktoken; install it with "
        "`pip install --no-deps dashscope`, or pass a real checkpoint directory/hub id instead"
    )


def build_qwen_tokenizer(tiktoken_file: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Build the Qwen2.5-VL fast tokenizer from a `qwen.tiktoken` file (~2.5 s on 2 CPU cores)."""
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    path = Path(tiktoken_file) if tiktoken_file is not None else qwen_tiktoken_path()
    converter = TikTokenConverter(vocab_file=str(path), pattern=QWEN_PATTERN)
    vocab, merges = converter.extract_vocab_merges_from_model(str(path))
    first_added = QWEN25_VL_ADDED_TOKENS[0][1]
    if len(vocab) != first_added:
        raise QualituneError(
            f"{path}: expected {first_added} BPE ranks (Qwen2 vocabulary), found {len(vocab)}"
        )
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",  # switched to <|im_end|> below, once the ids are fixed
        pad_token="<|endoftext|>",
        model_max_length=131072,
        errors="replace",
    )
    for text, _, special in QWEN25_VL_ADDED_TOKENS:
        token = AddedToken(text, special=special, normalized=False)
        if special:
            tok.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
        else:
            tok.add_tokens([token])
    for text, want, _ in QWEN25_VL_ADDED_TOKENS:
        got = tok.convert_tokens_to_ids(text)
        if got != want:  # a wrong id would silently misplace every image token
            raise QualituneError(f"offline Qwen tokenizer: {text} got id {got}, expected {want}")
    tok.eos_token = "<|im_end|>"  # what the Instruct checkpoints stop on
    tok.chat_template = QWEN25_VL_CHAT_TEMPLATE
    return tok


def _cache_key(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"qwen25vl-tokenizer-v{_BUILD_VERSION}-{digest}"


_LOADED: dict[str, PreTrainedTokenizerBase] = {}
"""Offline tokenizers already parsed in this process (parsing the 150k-token JSON takes ~2 s; every
scorer load would pay it). The instance is shared: treat it as read-only."""


SAVED_TOKENIZER_ENV = "QUALITUNE_QWEN_TOKENIZER"
"""A folder holding a saved copy of the offline Qwen tokenizer (`save_pretrained`); when set, the
offline build loads it instead of converting dashscope's `qwen.tiktoken`."""


def _finish(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """What a reloaded offline tokenizer may have lost: the chat template and the pad token."""
    if not tok.chat_template:
        tok.chat_template = QWEN25_VL_CHAT_TEMPLATE
    if tok.pad_token_id is None:
        tok.pad_token = "<|endoftext|>"
    return tok


def load_qwen_tokenizer(
    name_or_path: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> PreTrainedTokenizerBase:
    """Load the tokenizer for a checkpoint, or the offline Qwen2.5-VL tokenizer.

    `None` or `EMBEDDED` select the offline build (cached under
    `cache_dir`, default `cache.cache_dir()`); anything else goes to
    `AutoTokenizer.from_pretrained` (a local checkpoint folder or a hub id already in the HF cache).
    With `QUALITUNE_QWEN_TOKENIZER` set, the offline build is read from that saved folder instead.
    """
    if name_or_path is not None and str(name_or_path) != EMBEDDED:
        return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=False)
    saved = os.environ.get(SAVED_TOKENIZER_ENV)
    if saved:  # a machine without dashscope (a bare GPU box): a copy saved where dashscope was
        if not (Path(saved) / "tokenizer.json").is_file():
            raise QualituneError(
                f"{SAVED_TOKENIZER_ENV}={saved} holds no tokenizer.json; write one with "
                "`python benchmarks/gpu_check.py --save-tokenizer DIR` on a machine with dashscope"
            )
        return _finish(AutoTokenizer.from_pretrained(saved, trust_remote_code=False))
    source = qwen_tiktoken_path()
    target = Path(cache_dir) if cache_dir is not None else cache.cache_dir()
    target = target / _cache_key(source)
    if str(target) in _LOADED:
        return _LOADED[str(target)]
    if (target / "tokenizer.json").is_file():
        tok = _finish(AutoTokenizer.from_pretrained(str(target), trust_remote_code=False))
        _LOADED[str(target)] = tok
        return tok
    tok = build_qwen_tokenizer(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so a concurrent or interrupted build never leaves a
    # half-written cache that a later load would trust.
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        tok.save_pretrained(str(tmp))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tok
