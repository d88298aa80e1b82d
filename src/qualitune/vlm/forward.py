"""The training forward pass: decoder hidden states for a batch, without work the gradient never needs.

`decoder_hidden` computes what `Qwen2(_5)_VLModel.forward(**batch).last_hidden_state` computes, in
the same order of operations (token embeddings, vision features scattered into the image/video
pad positions, per-row 3-D M-RoPE positions, the language model), with three differences that do
not change the result:

- **Frozen vision without autograd.** When no weight of the vision tower or the projector trains
  (`tuning: lora`, IOVQA's recipe), their forward runs under `torch.no_grad()`: nothing of it is
  kept for backward (with gradient checkpointing, peft's input-grad hook would otherwise make the
  vision activations part of the graph). A trainable tower runs with autograd as before.
- **Per-item vision cache** (`VisionCache`, `train.cache_vision`). A frozen tower gives the same
  features for an item in every epoch, so they are computed once, kept on the CPU, and later
  epochs skip the vision tower for that item. Keys are the item's media paths plus the patch grids,
  so a changed pixel budget never hits a stale entry.
- **Padding-free packing** (`pack=True`, `train.packing`). The micro-batch's real tokens are
  concatenated into one row; 4-row `position_ids` (per-sequence text positions, then the three
  M-RoPE rows) mark the sequence boundaries. Flash-attention kernels (`flash_attention_2`/`_3`)
  take the boundaries as varlen `cu_seq_lens` and skip padding altogether; SDPA and eager get a
  block-diagonal mask from transformers, exact but quadratic in the packed length, which is why
  `train.packing: auto` packs only when the model runs a varlen kernel. The hidden states are
  scattered back to the padded layout, so the losses read the same positions either way.
- **Shared prompt prefix** (unpacked batches). When every row starts with the same tokens (the
  compact backend asks its question before the picture, so the whole question is such a prefix:
  ~40 of ~55 tokens), the prefix runs once, for one row, and its keys and values are repeated over
  the batch (`shared_prefix_length`, as scoring does). Same hidden states and gradients to float
  rounding (the prefix's contribution is summed over the rows by the repeat's backward); about
  half the decoder work per step on the compact backend. Off under gradient checkpointing and
  with active dropout (one dropout mask for all rows would change the noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qualitune.errors import QualituneError
from qualitune.vlm.scoring import MIN_SHARED_PREFIX, _core, mrope_positions
from qualitune.vlm.unwrap import unwrap_model

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")
"""Attention implementations whose kernels take packed sequences as varlen (cu_seqlens) input."""

PACKING_MODES = ("auto", True, False)


def attention_implementation(model: torch.nn.Module) -> str:
    """The decoder's attention implementation ("sdpa", "eager", "flash_attention_2", ...)."""
    base = unwrap_model(model)
    cfg = getattr(base.config, "text_config", None) or base.config
    return str(getattr(cfg, "_attn_implementation", None) or getattr(base.config, "_attn_implementation", ""))


def supports_varlen(model: torch.nn.Module) -> bool:
    """Whether packed sequences run as varlen attention (no padding work, no block mask)."""
    impl = attention_implementation(model)
    return impl in VARLEN_ATTENTION or ("flash" in impl and "attn" in impl)  # kernels-hub flash builds


def resolve_packing(setting: str | bool, model: torch.nn.Module) -> bool:
    """`train.packing`: "auto" packs exactly when the attention is a varlen flash kernel; True
    always packs (SDPA/eager then use a block-diagonal mask); False never does."""
    if setting == "auto":
        return supports_varlen(model)
    if isinstance(setting, bool):
        return setting
    raise QualituneError(f"train.packing must be auto, true or false, got {setting!r}")


def vision_is_frozen(model: torch.nn.Module) -> bool:
    """True when neither the vision tower nor the projector has a trainable weight."""
    visual = getattr(_core(model), "visual", None)
    return visual is not None and not any(p.requires_grad for p in visual.parameters())


class VisionCache:
    """Vision features per item (on the CPU, pinned when a GPU is used), for a frozen tower.

    Only valid while the tower's weights do not change: `decoder_hidden` uses it only when
    `vision_is_frozen`, and the trainer refuses `train.cache_vision` with a trainable tower.
    """

    def __init__(self, pin: bool = False) -> None:
        self._items: dict[tuple, torch.Tensor] = {}
        self.pin = pin
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._items.values())

    def get(self, key: tuple) -> torch.Tensor | None:
        return self._items.get(key)

    def put(self, key: tuple, features: torch.Tensor) -> None:
        stored = features.detach().to("cpu", copy=True)
        self._items[key] = stored.pin_memory() if self.pin else stored


def vision_blocks_per_row(types: torch.Tensor, kind: int) -> list[int]:
    """How many image (`kind` 1) or video (2) blocks each row holds: runs of that token type.

    Each block is `<|vision_start|> pads <|vision_end|>`, so consecutive blocks are separated by
    text tokens and every run of pad tokens is one image (one frame in `frames` mode) or video.
    """
    hit = (types == kind).to(torch.int8)
    starts = hit[:, 1:] > hit[:, :-1]
    return (starts.sum(dim=1) + hit[:, 0]).tolist()


def _features(
    core: torch.nn.Module,
    kind: str,
    pixels: torch.Tensor,
    grid: torch.Tensor,
    blocks: Sequence[int],
    *,
    frozen: bool,
    cache: VisionCache | None,
    keys: Sequence[str] | None,
    device: torch.device,
) -> torch.Tensor:
    """The merged vision features of every `kind` block in batch order, `(n_tokens, hidden)`."""
    encode = core.get_image_features if kind == "image" else core.get_video_features

    def run(px: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return encode(px.to(device, non_blocking=True), g.to(device), return_dict=True).pooler_output

    if not frozen:
        return torch.cat(run(pixels, grid), dim=0)
    if cache is None or keys is None:
        with torch.no_grad():
            return torch.cat(run(pixels, grid), dim=0)

    # Rows -> their blocks' patch rows and grids; compute only the rows the cache lacks.
    grid_cpu = grid.cpu()
    patches = grid_cpu.prod(dim=-1).tolist()
    row_slices, row_grids, row_keys = [], [], []
    g0 = p0 = 0
    for r, n in enumerate(blocks):
        n_patch = sum(patches[g0 : g0 + n])
        row_slices.append((p0, p0 + n_patch))
        row_grids.append((g0, g0 + n))
        row_keys.append((kind, keys[r], tuple(map(tuple, grid_cpu[g0 : g0 + n].tolist()))))
        g0 += n
        p0 += n_patch
    missing = [r for r, n in enumerate(blocks) if n and row_keys[r] not in cache]
    if missing:
        px = torch.cat([pixels[slice(*row_slices[r])] for r in missing], dim=0)
        g = torch.cat([grid[slice(*row_grids[r])] for r in missing], dim=0)
        with torch.no_grad():
            per_block = run(px, g)
        i = 0
        for r in missing:
            n = blocks[r]
            cache.put(row_keys[r], torch.cat(per_block[i : i + n], dim=0))
            i += n
        cache.misses += len(missing)
    rows = [r for r, n in enumerate(blocks) if n]
    cache.hits += len(rows) - len(missing)
    return torch.cat([cache.get(row_keys[r]).to(device, non_blocking=True) for r in rows], dim=0)


def training_prefix_length(ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> int:
    """Leading tokens every row shares, unpadded and before any vision token; 0 when fewer than
    `MIN_SHARED_PREFIX` or the batch has one row. At least the last column stays in the batched
    forward."""
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0) & mask.bool().all(dim=0) & ~(types != 0).any(dim=0).to(ids.device)
    n = min(int(same.long().cumprod(dim=0).sum()), ids.shape[1] - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def _can_share_prefix(lm: torch.nn.Module) -> bool:
    if getattr(lm, "gradient_checkpointing", False):
        return False
    return not any(isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training for m in lm.modules())


def decoder_hidden(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    pack: bool = False,
    cache: VisionCache | None = None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Last hidden states `(B, L, hidden)` of the decoder for a right- or left-padded batch.

    Same values as the model's own forward (module docstring); padded positions of a packed
    forward are zeros. `cache` is used only while the vision tower is frozen and needs
    `batch["media_keys"]` (one string per row, as `encode_examples` sets it).
    """
    base = unwrap_model(model)
    core = _core(base)
    param = next(base.parameters())
    device = param.device
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    types = batch["mm_token_type_ids"]
    embeds = core.get_input_embeddings()(ids)
    frozen = vision_is_frozen(base)
    keys = batch.get("media_keys")
    for kind, px_key, grid_key, type_id, token_id in (
        ("image", "pixel_values", "image_grid_thw", 1, core.config.image_token_id),
        ("video", "pixel_values_videos", "video_grid_thw", 2, core.config.video_token_id),
    ):
        if batch.get(px_key) is None:
            continue
        feats = _features(
            core,
            kind,
            batch[px_key],
            batch[grid_key],
            vision_blocks_per_row(types.cpu(), type_id),
            frozen=frozen,
            cache=cache,
            keys=keys,
            device=device,
        )
        where = (ids == token_id).unsqueeze(-1)
        if int(where.sum()) != feats.shape[0]:
            raise QualituneError(
                f"{kind} features ({feats.shape[0]}) and {kind} tokens ({int(where.sum())}) differ"
            )
        embeds = embeds.masked_scatter(where, feats.to(embeds.dtype))

    pos_inputs = {
        k: batch[k].to(device)
        for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
        if batch.get(k) is not None
    }
    positions = mrope_positions(
        base, {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types.to(device), **pos_inputs}
    )
    lm = core.language_model
    if not pack:
        n = training_prefix_length(ids, mask, types) if share_prefix and _can_share_prefix(lm) else 0
        if not n:
            return lm(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        head = lm(
            inputs_embeds=embeds[:1, :n],
            attention_mask=mask[:1, :n],
            position_ids=positions[:, :1, :n],
            use_cache=True,
        )
        kv = head.past_key_values
        kv.batch_repeat_interleave(ids.shape[0])
        tail = lm(
            inputs_embeds=embeds[:, n:],
            attention_mask=mask,
            position_ids=positions[:, :, n:],
            cache=kv,
            use_cache=True,
        )
        width = head.last_hidden_state.shape[-1]
        return torch.cat(
            [head.last_hidden_state.expand(ids.shape[0], n, width), tail.last_hidden_state], dim=1
        )

    b, length, width = embeds.shape
    keep = mask.bool()
    flat = keep.reshape(-1).nonzero().squeeze(1)
    packed = embeds.reshape(b * length, width).index_select(0, flat).unsqueeze(0)
    rope = positions.reshape(3, b * length).index_select(1, flat).unsqueeze(1)  # (3, 1, N)
    text = (keep.long().cumsum(dim=1) - 1).reshape(-1).index_select(0, flat).view(1, 1, -1)
    kwargs = {}
    if supports_varlen(base):
        lengths = keep.sum(dim=1)
        cu = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        longest = int(lengths.max())
        kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}
    out = lm(
        inputs_embeds=packed,
        attention_mask=None,  # the boundaries come from the text position row (and cu_seq_lens)
        position_ids=torch.cat([text, rope], dim=0),
        use_cache=False,
        **kwargs,
    ).last_hidden_state[0]
    return out.new_zeros(b * length, width).index_copy(0, flat, out).view(b, length, width)


__all__ = [
    "PACKING_MODES",
    "VARLEN_ATTENTION",
    "VisionCache",
    "attention_implementation",
    "decoder_hidden",
    "resolve_packing",
    "supports_varlen",
    "training_prefix_length",
    "vision_blocks_per_row",
    "vision_is_frozen",
]
