"""Which weights train: LoRA, full fine-tuning, VITAL's encoder-centred mode and the decoder warm-up.

Qwen2(.5)-VL has three parts, named by parameter prefix:
- vision encoder: `model.visual.*` except the merger (patch embedding and ViT blocks);
- projector: `model.visual.merger.*` (the MLP that maps merged patches into the decoder's width);
- anchor: `model.visual.merger.anchor.*`, the compact backend's probe-anchored quality token: fitted
  in closed form before training and frozen in every mode (`qualitune.vlm.backends.compact.anchor`);
- decoder: `model.language_model.*` and `lm_head`.

Modes (`train.tuning`):
- `lora`: peft LoRA adapters on the decoder's linear layers (IOVQA; rank/alpha/dropout/targets from
  params); everything else frozen.
- `full`: every weight trains.
- `encoder`: VITAL's encoder-centred training: only the vision encoder trains; decoder and projector
  stay frozen, so the encoder learns to speak the decoder's existing language and can later move
  to another decoder of the same family.
- `warmup`: the decoder side adapts to a (transferred) encoder: projector + decoder LoRA train,
  the vision encoder is frozen.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from qualitune.errors import QualituneError
from qualitune.vlm.unwrap import unwrap_model

TUNINGS = ("lora", "full", "encoder", "warmup")
VISION_PREFIX = "model.visual."
PROJECTOR_PREFIX = "model.visual.merger."
ANCHOR_PREFIX = "model.visual.merger.anchor."


def part_of(name: str) -> str:
    """'vision', 'projector', 'anchor' or 'decoder' for a parameter name of the bare (non-peft) model."""
    name = _strip_peft(name)
    if name.startswith(ANCHOR_PREFIX):
        return "anchor"
    if name.startswith(PROJECTOR_PREFIX):
        return "projector"
    if name.startswith(VISION_PREFIX):
        return "vision"
    return "decoder"


def _strip_peft(name: str) -> str:
    """`base_model.model.model.visual...` (peft) -> `model.visual...`; LoRA names keep their suffix."""
    return name[len("base_model.model.") :] if name.startswith("base_model.model.") else name


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings; `target_modules` are module-name suffixes inside the decoder."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    extra: dict = field(default_factory=dict)

    def target_regex(self) -> str:
        """Only the decoder's layers: the vision tower also has `gate_proj`/`up_proj`/`down_proj`."""
        if not self.target_modules:
            raise QualituneError("train.lora.target_modules is empty")
        names = "|".join(re.escape(m) for m in self.target_modules)
        return rf"^model\.language_model\..*\.({names})$"


def apply_tuning(model: torch.nn.Module, tuning: str, lora: LoraSettings | None = None) -> torch.nn.Module:
    """Set `requires_grad` for the chosen mode; LoRA modes return the peft-wrapped model."""
    if tuning not in TUNINGS:
        raise QualituneError(f"train.tuning must be one of {TUNINGS}, got {tuning!r}")
    if hasattr(model, "peft_config"):
        return _continue_lora(model, tuning)
    for p in model.parameters():
        p.requires_grad_(tuning == "full")
    if tuning == "encoder":
        for name, p in model.named_parameters():
            p.requires_grad_(part_of(name) == "vision")
    if tuning in ("lora", "warmup"):
        model = add_lora(model, lora or LoraSettings())
        if tuning == "warmup":
            for name, p in model.named_parameters():
                if part_of(name) == "projector":
                    p.requires_grad_(True)
    _freeze_anchor(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise QualituneError(
            f"tuning {tuning!r} left no trainable parameter (check train.lora.target_modules)"
        )
    return model


def _freeze_anchor(model: torch.nn.Module) -> None:
    """The anchor is a fitted probe kept fixed (LP-FT): no tuning mode trains it."""
    for name, p in model.named_parameters():
        if part_of(name) == "anchor":
            p.requires_grad_(False)


def _continue_lora(model: torch.nn.Module, tuning: str) -> torch.nn.Module:
    """A model that already carries adapters (a second training phase, e.g. IOVQA after VITAL's
    PMOD pre-training) keeps training the same adapters: wrapping it again would stack a second,
    fresh LoRA on top and leave the first one frozen."""
    if tuning not in ("lora", "warmup"):
        raise QualituneError(
            f"tuning {tuning!r} on a model that already has LoRA adapters: merge them first "
            "(merge_and_unload) or continue with tuning lora/warmup"
        )
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or (tuning == "warmup" and part_of(name) == "projector"))
    _freeze_anchor(model)
    return model


def add_lora(model: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=int(lora.r),
        lora_alpha=int(lora.alpha),
        lora_dropout=float(lora.dropout),
        target_modules=lora.target_regex(),
        bias="none",
        **lora.extra,
    )
    peft_model = get_peft_model(model, cfg)
    n = sum(1 for name, _ in peft_model.named_modules() if name.endswith("lora_A"))
    if n == 0:
        raise QualituneError(
            f"no decoder module matches train.lora.target_modules={list(lora.target_modules)}"
        )
    return peft_model


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters by (peft-wrapped) name, detached copies on CPU."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def non_lora_trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable weights that are not LoRA adapters, keyed by the bare model's names (what a scorer
    directory stores in `weights.safetensors` next to the adapter)."""
    return {
        _strip_peft(n).replace(".base_layer.", "."): p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad and "lora_" not in n
    }


def fitted_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Frozen weights fitted from data before training (the anchor), keyed by bare-model names: a
    scorer folder stores them with the trained ones, since a fresh base model does not have them."""
    return {
        _strip_peft(n): p.detach().cpu().contiguous()
        for n, p in model.named_parameters()
        if part_of(n) == "anchor"
    }


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], *, what: str = "weights") -> None:
    """Copy named weights into the bare model; every name must exist with the same shape."""
    base = unwrap_model(model)
    params = dict(base.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise QualituneError(f"{what}: {len(missing)} names do not exist in the model, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            if params[name].shape != value.shape:
                raise QualituneError(
                    f"{what}: {name} has shape {tuple(value.shape)}, the model {tuple(params[name].shape)}"
                )
            params[name].copy_(value.to(params[name].dtype))


def vision_weights(model: torch.nn.Module, *, include_projector: bool = False) -> dict[str, torch.Tensor]:
    """The vision encoder's weights (optionally with the projector), keyed by bare-model names."""
    keep = ("vision", "projector") if include_projector else ("vision",)
    return {
        n: p.detach().cpu().clone() for n, p in unwrap_model(model).named_parameters() if part_of(n) in keep
    }


def transfer_vision(
    source: torch.nn.Module, target: torch.nn.Module, *, include_projector: bool = False
) -> int:
    """Copy a trained vision encoder into another model whose vision config is the same (VITAL's
    transfer). The projector stays the target's own unless `include_projector` (it maps into the
    decoder's width, so it only transfers between decoders of one width). Returns tensors copied."""
    src_cfg = _vision_config(source)
    dst_cfg = _vision_config(target)
    if src_cfg != dst_cfg:
        diff = sorted(k for k in set(src_cfg) | set(dst_cfg) if src_cfg.get(k) != dst_cfg.get(k))
        raise QualituneError(f"vision configs differ in {diff}: the encoder cannot move to this decoder")
    weights = vision_weights(source, include_projector=include_projector)
    load_weights(target, weights, what="vision transfer")
    return len(weights)


_IGNORED_VISION_KEYS = {"out_hidden_size", "_name_or_path", "transformers_version", "dtype", "torch_dtype"}


def _vision_config(model: torch.nn.Module) -> dict:
    cfg = unwrap_model(model).config.vision_config.to_dict()
    return {k: v for k, v in cfg.items() if k not in _IGNORED_VISION_KEYS}


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts, per part; the run logs them so a frozen part shows."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = "lora" if "lora_" in name else part_of(name)
        out[f"total.{part}"] = out.get(f"total.{part}", 0) + p.numel()
        if p.requires_grad:
            out[f"trainable.{part}"] = out.get(f"trainable.{part}", 0) + p.numel()
    return out


def named_trainable(model: torch.nn.Module) -> Iterable[tuple[str, torch.nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if p.requires_grad)


__all__ = [
    "TUNINGS",
    "LoraSettings",
    "apply_tuning",
    "count_parameters",
    "fitted_weights",
    "load_weights",
    "non_lora_trainable",
    "part_of",
    "trainable_state",
    "transfer_vision",
    "vision_weights",
]
