"""The training objective: the recipe's losses on the decoder's hidden states at the answer positions."""

from __future__ import annotations

import torch

from qualitune.vlm.forward import (
    VisionCache,
    decoder_hidden,
)
from qualitune.vlm.losses import LossConfig, answer_losses, combine, supervised_labels


class Objective(torch.nn.Module):
    """The model plus its loss, as one module so DDP sees a single forward per step.

    The decoder's hidden states come from `qualitune.vlm.forward.decoder_hidden`: the model's own
    forward, with a frozen vision tower run without autograd, optionally per-item cached
    (`vision_cache`) and the batch packed without padding (`pack`); the same numbers either way.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_cfg: LossConfig,
        level_ids: list[int] | None,
        *,
        pack: bool = False,
        vision_cache: VisionCache | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg
        self.level_ids = level_ids
        self.pack = pack
        self.vision_cache = vision_cache

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from qualitune.vlm.unwrap import unwrap_model

        base = unwrap_model(self.model)
        hidden = decoder_hidden(self.model, batch, pack=self.pack, cache=self.vision_cache)
        dev = hidden.device
        labels = supervised_labels(
            batch["labels"].to(dev), batch["value_mask"].to(dev), self.loss_cfg.loss_on
        )
        level_rows = batch["level_rows"].to(dev)
        losses = answer_losses(
            hidden,
            base.lm_head,
            labels,
            focal_rows=batch["focal_rows"].to(dev),
            cfg=self.loss_cfg,
            level_ids=self.level_ids,
            level_targets=batch["level_targets"].to(dev),
            level_rows=level_rows,
            value_start=batch["value_start"].to(dev),
        )
        loss = combine(losses, batch["weights"].to(dev), level_rows, self.loss_cfg)
        return loss, losses
