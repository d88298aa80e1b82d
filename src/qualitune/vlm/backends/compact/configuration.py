"""The compact backend's configuration: `CompactConfig` (model type `qualitune_compact`).

The `model_type` string is part of saved scorers' records: keep it."""

from __future__ import annotations

from transformers import PretrainedConfig

LM_GEOMETRY = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
)


class CompactConfig(PretrainedConfig):
    model_type = "qualitune_compact"

    def __init__(
        self,
        lm_config: dict | None = None,
        image_size: int = 384,
        grid: int = 2,
        projector_hidden: int = 1024,
        anchor_tokens: int = 0,
        image_token_id: int | None = None,
        video_token_id: int | None = None,
        **kwargs,
    ):
        self.lm_config = dict(
            lm_config or {}
        )  # the decoder's config, for the record (not "text_config": transformers would read it as a sub-config)
        self.image_size = int(image_size)
        self.grid = int(grid)
        self.projector_hidden = int(projector_hidden)
        self.anchor_tokens = int(anchor_tokens)  # > 0: the probe-anchored quality token (`anchor`)
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        super().__init__(**kwargs)
        # generate() sizes its KV cache from the top-level config: mirror the decoder's geometry.
        for key in LM_GEOMETRY:
            if key in self.lm_config:
                setattr(self, key, self.lm_config[key])

    @property
    def n_visual_tokens(self) -> int:
        return 1 + self.grid * self.grid + (1 if self.anchor_tokens else 0)

    @property
    def vision_config(self) -> PretrainedConfig:
        """What a vision transfer must match (`qualitune.vlm.trainable.transfer_vision`); a property,
        so it stays out of `to_dict`."""
        return PretrainedConfig(
            encoder="efficientnet-lite0",
            image_size=self.image_size,
            grid=self.grid,
            projector_hidden=self.projector_hidden,
        )
