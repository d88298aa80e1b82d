"""`unwrap_model`: the transformers model inside a PEFT wrapper.

Training and scoring wrap a base model in `peft.PeftModel` when a LoRA adapter is attached; code
that reads the base model's own attributes (`config`, `model.visual`, the `forward` signature)
must look through that wrapper. This module imports nothing from qualitune, so any layer may use it.
"""

from __future__ import annotations

import torch


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (`get_base_model()`), or `model` itself.

    Only the PEFT layer is removed: the result is still the model that owns the weights (a LoRA
    layer's base weights included), so in-place edits on it reach the wrapped model too.
    """
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
