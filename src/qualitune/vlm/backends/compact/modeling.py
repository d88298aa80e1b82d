"""The compact backend's modules: `CompactVLM` = `CompactVisual` (EfficientNet-Lite0 + projector,
with the frozen-encoder fast path and feature cache) + SmolLM2's decoder (`CompactDecoder`).

Parameter names follow Qwen2.5-VL's (`model.visual.*`, `model.visual.merger.*`,
`model.language_model.*`, `lm_head`): saved scorers' weight files record them, keep them.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.models.llama.modeling_llama import LlamaModel

from qualitune.errors import QualituneError
from qualitune.vlm.backends.compact.configuration import CompactConfig
from qualitune.vlm.backends.compact.efficientnet import (
    HEAD_CHANNELS,
    EfficientNetLite0,
    load_efficientnet_lite0,
)
from qualitune.vlm.backends.compact.encoder_runtime import OrtEncoder, build_fast_encoder
from qualitune.vlm.feature_store import FeatureStore, weights_digest
from qualitune.vlm.unwrap import unwrap_model

# Stages of EfficientNet-Lite0 whose mean/std enter the global token (the first, 16 channels at
# half resolution, adds little and costs a full-resolution reduction).
GLOBAL_STAGES = (1, 2, 3, 4, 5, 6)
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)


def global_feature_dim() -> int:
    return 2 * HEAD_CHANNELS + 2 * sum(STAGE_CHANNELS[i] for i in GLOBAL_STAGES)


class Projector(nn.Module):
    """Encoder features -> decoder embeddings, one MLP per token kind.

    The output is RMS-normalised and multiplied by a learned scale that starts at the decoder's own
    embedding RMS: image tokens enter at the scale text tokens have, whatever the encoder's
    feature magnitudes, so the decoder neither ignores them nor is swamped by them.
    """

    def __init__(self, global_dim: int, grid_dim: int, hidden: int, out: int, embed_rms: float):
        super().__init__()
        self.global_mlp = nn.Sequential(
            nn.LayerNorm(global_dim), nn.Linear(global_dim, hidden), nn.GELU(), nn.Linear(hidden, out)
        )
        self.grid_mlp = nn.Sequential(
            nn.LayerNorm(grid_dim), nn.Linear(grid_dim, hidden), nn.GELU(), nn.Linear(hidden, out)
        )
        self.grid_pos = nn.Parameter(torch.zeros(1, 1, out))  # set per grid size in CompactVisual
        self.scale = nn.Parameter(torch.tensor(float(embed_rms)))
        # Per-feature standardisation (trainable, saved with the projector). Identity until
        # `standardise` sets it from training features: the global vector mixes means and spreads of
        # seven feature maps whose scales differ by orders of magnitude, which LayerNorm (per item,
        # across features) cannot even out.
        self.global_shift = nn.Parameter(torch.zeros(global_dim))
        self.global_gain = nn.Parameter(torch.ones(global_dim))
        self.grid_shift = nn.Parameter(torch.zeros(grid_dim))
        self.grid_gain = nn.Parameter(torch.ones(grid_dim))
        # The probe-anchored quality token (`qualitune.vlm.backends.compact.anchor`), added by the
        # train stage (`model.anchor: probe`) or by loading a scorer that has one; None: 1 + G*G tokens.
        self.anchor: nn.Module | None = None

    @torch.no_grad()
    def standardise(self, global_feats: torch.Tensor, grid_feats: torch.Tensor) -> None:
        """Data-dependent init: zero mean, unit variance per feature on these (training) features."""
        for feats, shift, gain in (
            (global_feats, self.global_shift, self.global_gain),
            (grid_feats.reshape(-1, grid_feats.shape[-1]), self.grid_shift, self.grid_gain),
        ):
            feats = feats.float()
            shift.copy_(feats.mean(0))
            gain.copy_(1.0 / feats.std(0).clamp(min=1e-4))

    def forward(self, global_feats: torch.Tensor, grid_feats: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.anchor is not None:  # last, right before <|vision_end|>: it reads the raw features
            parts.append(self.anchor(global_feats).unsqueeze(1))
        global_feats = (global_feats - self.global_shift) * self.global_gain
        grid_feats = (grid_feats - self.grid_shift) * self.grid_gain
        g = self.global_mlp(global_feats).unsqueeze(1)  # (N, 1, out)
        m = self.grid_mlp(grid_feats) + self.grid_pos  # (N, G*G, out)
        tokens = torch.cat([g, m, *parts], dim=1)
        tokens = tokens * torch.rsqrt(tokens.pow(2).mean(-1, keepdim=True) + 1e-6)
        return tokens * self.scale


class _EncoderMaps(nn.Module):
    """The encoder's feature maps the projector reads: the head map, then `GLOBAL_STAGES`' outputs.
    A plain tuple of tensors, so it traces (TorchScript) and exports (ONNX) as it is."""

    def __init__(self, encoder: EfficientNetLite0):
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        head, stages = self.encoder.forward_features(x)
        return (head, *(stages[i] for i in GLOBAL_STAGES))


def pool_features(maps: tuple[torch.Tensor, ...], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature maps -> the projector's inputs (what the feature cache stores): the global vector of
    per-channel means and standard deviations, and the head map pooled to `grid` x `grid`."""
    stats = [t for m in maps for t in (m.mean(dim=(2, 3)), m.std(dim=(2, 3)))]
    global_feats = torch.cat(stats, dim=1)
    grid_feats = F.adaptive_avg_pool2d(maps[0], grid).flatten(2).transpose(1, 2)  # (N, G*G, 1280)
    return global_feats, grid_feats


class _Features(nn.Module):
    """The encoder's forward reduced to the projector's inputs (the eager and TorchScript path)."""

    def __init__(self, encoder: EfficientNetLite0, grid: int):
        super().__init__()
        self.maps = _EncoderMaps(encoder)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pool_features(self.maps(x), self.grid)


class CompactVisual(nn.Module):
    """EfficientNet-Lite0 + projector, with the frozen-encoder fast path and feature cache."""

    def __init__(self, config: CompactConfig, embed_rms: float, hidden_size: int):
        super().__init__()
        self.config = config
        self.encoder = load_efficientnet_lite0(pretrained=True)
        self.merger = Projector(
            global_feature_dim(), HEAD_CHANNELS, config.projector_hidden, hidden_size, embed_rms
        )
        with torch.no_grad():  # a fixed sinusoid per grid cell tells the decoder where a token sits
            n = config.grid * config.grid
            pos = torch.arange(n, dtype=torch.float32)[:, None]
            freq = torch.exp(-torch.arange(0, hidden_size, 2, dtype=torch.float32) / hidden_size * 9.2)
            table = torch.zeros(n, hidden_size)
            table[:, 0::2] = torch.sin(pos * freq)
            table[:, 1::2] = torch.cos(pos * freq)
            self.merger.grid_pos = nn.Parameter(0.1 * table.unsqueeze(0))
        self._features = _Features(self.encoder, config.grid)
        self._traced: dict[tuple, Any] = {}
        self.cache_features = True
        # ~37 KB per photo: 50,000 (1.8 GB) holds a large training set across epochs. `Scorer.load`
        # lowers it (`limit_cache`): a server sees mostly new photos, and must not grow without end.
        self.max_cached = int(os.environ.get("QUALITUNE_FEATURE_CACHE", "50000"))
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._version_seen = -1
        # the on-disk store behind the in-memory cache (`qualitune.vlm.feature_store`); None: off
        self.store_root: Path | None = None
        self._store: FeatureStore | None = None

    def train(self, mode: bool = True):
        """BatchNorm statistics stay frozen (eval) even when the encoder trains: batches of a few
        photos would otherwise overwrite ImageNet's running statistics with noise."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def _fast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder's features, on ONNX Runtime (CPU, float32, `onnxruntime` installed)
        or else TorchScript-traced and frozen (conv+BN folded) in channels-last
        (`qualitune.vlm.backends.compact.encoder_runtime`). Both compute what the eager
        `_features` does, to float rounding."""
        key = (tuple(x.shape[1:]), x.dtype, x.device.type)
        fn = self._traced.get(key)
        if fn is None:
            fn = build_fast_encoder(self._features, x)
            self._traced = {key: fn}  # the encoder may have changed since an older build
        with torch.inference_mode():
            if isinstance(fn, OrtEncoder):
                g, m = pool_features(fn(x), self.config.grid)
            else:
                g, m = fn(x.contiguous(memory_format=torch.channels_last))
        return g.clone(), m.clone()

    def invalidate(self) -> None:
        """Forget traced encoders and cached features (after the encoder's weights change)."""
        self._traced.clear()
        self._cache.clear()
        self._store = None

    def _disk(self) -> FeatureStore | None:
        """The on-disk store for the encoder's current weights (their digest names its folder)."""
        if self.store_root is None:
            return None
        if self._store is None or self._store.root != self.store_root:
            digest = weights_digest(
                self.encoder, "efficientnet-lite0", self.config.image_size, self.config.grid
            )
            self._store = FeatureStore(self.store_root, digest)
        return self._store

    def limit_cache(self, n: int) -> None:
        """Keep at most `n` photos' features (the least recently stored go first)."""
        self.max_cached = max(0, int(n))
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Forget cached features only (e.g. to time scoring as a first-time user sees it)."""
        self._cache.clear()

    def _weights_version(self) -> int:
        """Sum of the encoder tensors' in-place version counters: any `load_state_dict`, weight
        transfer or optimiser step bumps it, which voids traced copies and cached features."""
        return sum(p._version for p in self.encoder.parameters()) + sum(
            b._version for b in self.encoder.buffers()
        )

    @staticmethod
    def pixel_keys(pixel_values: torch.Tensor) -> list[str]:
        """Content keys of the feature cache, one per image."""
        # Raw bytes, whatever the dtype (numpy has no bfloat16). A non-float32 dtype joins the key;
        # float32 keys stay plain, so feature caches kept on disk by earlier runs remain valid.
        rows = pixel_values.detach().cpu().contiguous()
        tag = b"" if rows.dtype == torch.float32 else str(rows.dtype).encode()
        return [
            hashlib.sha1(tag + row.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for row in rows
        ]

    def cached(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The feature cache (content key -> (global, grid) features), e.g. to save it to disk."""
        return dict(self._cache)

    def prime(self, entries: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fill the cache with features computed earlier by this same frozen encoder (the caller
        vouches for that: entries from another encoder would be used as they are)."""
        self._version_seen = self._weights_version()
        self._cache.update(entries)

    def features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        version = self._weights_version()
        if version != self._version_seen:
            self.invalidate()
            self._version_seen = version
        if torch.is_grad_enabled() and not self.encoder_frozen():  # the encoder is training
            self.invalidate()
            return self._features(pixel_values)
        if not self.cache_features:
            return self._fast(pixel_values)
        keys = self.pixel_keys(pixel_values)
        # this batch's features, gathered before any eviction (a batch may exceed the cache's size)
        rows = {i: self._cache[k] for i, k in enumerate(keys) if k in self._cache}
        missing = [i for i in range(len(keys)) if i not in rows]
        store = self._disk() if missing else None
        if store is not None:
            for i in missing:
                if (entry := store.get(keys[i])) is not None:
                    rows[i] = entry
                    self._cache[keys[i]] = entry
            missing = [i for i in missing if i not in rows]
        if missing:
            g, m = self._fast(pixel_values[missing])
            for j, i in enumerate(missing):
                rows[i] = (g[j].cpu(), m[j].cpu())
                self._cache[keys[i]] = rows[i]
                if store is not None:
                    store.put(keys[i], rows[i])
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        dev = pixel_values.device
        g = torch.stack([rows[i][0] for i in range(len(keys))]).to(dev)
        m = torch.stack([rows[i][1] for i in range(len(keys))]).to(dev)
        return g, m

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels -> (N * n_visual_tokens, hidden) decoder embeddings."""
        g, m = self.features(pixel_values)
        dtype = self.merger.scale.dtype
        return self.merger(g.to(dtype), m.to(dtype)).flatten(0, 1)


def _register_output_capture(decoder: nn.Module) -> None:
    """transformers (5.x) records `output_hidden_states` through hooks looked up by the model's class
    name, registered when a model is built; a decoder switched to `CompactDecoder` afterwards must be
    registered too, or the logit lens gets no hidden states."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # older transformers record outputs without the registry
        return
    _CAN_RECORD_REGISTRY[decoder] = decoder._can_record_outputs


class CompactDecoder(LlamaModel):
    """SmolLM2's `LlamaModel`, taking Qwen-style position ids too.

    Shared code (scoring, the training forward) hands the language model 3-row M-RoPE ids, or 4
    rows when packing; row 0 is the plain text position in both layouts (for this model all rows
    are equal: see `CompactModel.get_rope_index`), which is what RoPE here needs. The loaded
    decoder's class is switched to this subclass, so parameter names stay those of SmolLM2.
    """

    def forward(self, *args, position_ids: torch.Tensor | None = None, **kwargs):
        if position_ids is not None and position_ids.dim() == 3:
            position_ids = position_ids[0]
        if "past_key_values" in kwargs and "cache" not in kwargs:
            # the shared scoring code speaks the Qwen models' `past_key_values`; LlamaModel (5.24+) calls it
            # `cache` and warns on every call under the old name
            kwargs["cache"] = kwargs.pop("past_key_values")
        return super().forward(*args, position_ids=position_ids, **kwargs)


class CompactModel(nn.Module):
    """Vision + decoder stack; returns hidden states like `Qwen2_5_VLModel`."""

    def __init__(self, config: CompactConfig, language_model: nn.Module, visual: CompactVisual):
        super().__init__()
        self.config = config
        self.visual = visual
        self.language_model = language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_rope_index(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1-D positions (the decoder has plain RoPE), shaped (3, B, L) like Qwen's M-RoPE ids so
        scoring code handles both backends alike."""
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos.unsqueeze(0).expand(3, -1, -1), torch.zeros(input_ids.shape[0], 1, dtype=torch.long)

    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None, return_dict: bool = True
    ) -> BaseModelOutputWithPooling:
        """Per-image visual embeddings (`pooler_output`: one `(n_visual_tokens, hidden)` tensor per
        image), the interface `Qwen2_5_VLModel.get_image_features` offers the training forward."""
        tokens = self.visual(pixel_values)
        per_image = tokens.split(self.config.n_visual_tokens, dim=0)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=per_image)

    def get_video_features(self, *args, **kwargs):
        raise QualituneError("the compact backend takes videos as frames: set model.video_mode: frames")

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.image_token_id
        n_slots = int(is_image.sum())
        if pixel_values is None:
            if n_slots:
                raise QualituneError(f"{n_slots} image tokens in the prompt but no pixel_values")
            return embeds
        vision = self.visual(pixel_values)
        if vision.shape[0] != n_slots:
            raise QualituneError(
                f"{n_slots} image tokens in the prompt but {vision.shape[0]} visual embeddings "
                f"({pixel_values.shape[0]} images x {self.config.n_visual_tokens} tokens)"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), vision.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if pixel_values_videos is not None:
            raise QualituneError("the compact backend takes videos as frames: set model.video_mode: frames")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )


class CompactVLM(PreTrainedModel, GenerationMixin):
    """Generation model with Qwen2.5-VL's interface (see `qualitune.vlm.backends.compact`)."""

    config_class = CompactConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer"]

    def __init__(self, config: CompactConfig, causal_lm: PreTrainedModel, visual: CompactVisual):
        super().__init__(config)
        if not isinstance(causal_lm.model, LlamaModel):
            raise QualituneError(
                f"the compact decoder must be a Llama-family model, got {type(causal_lm.model).__name__}"
            )
        causal_lm.model.__class__ = CompactDecoder
        _register_output_capture(causal_lm.model)
        self.model = CompactModel(config, causal_lm.model, visual)
        self.lm_head = causal_lm.lm_head
        self.generation_config = causal_lm.generation_config

    def _init_weights(self, module: nn.Module) -> None:  # parts arrive initialised
        return

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            shift = labels[:, 1:].reshape(-1)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shift)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs):
        """Pixels only on the first step; later steps feed the new token with the cache."""
        first = past_key_values is None or past_key_values.get_seq_length() == 0
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) if attention_mask is not None else None
        if not first:
            input_ids = input_ids[:, -1:]
            pos = pos[:, -1:] if pos is not None else None
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": pos,
            "past_key_values": past_key_values,
            "pixel_values": kwargs.get("pixel_values") if first else None,
            "use_cache": True,
        }


def is_compact(model: torch.nn.Module) -> bool:
    """Whether `model` (or the model inside its PEFT wrapper) is a `CompactVLM`."""
    return isinstance(unwrap_model(model), CompactVLM)
