"""A trained scorer on disk: the folder format, writing it and loading it back.

A scorer directory (what the `train` stage writes to `models/scorer/`) holds:

- `qualitune_scorer.json`: the base model (hub id, local folder or `tiny-qwen2.5-vl` + seed), the
  answer format and label range, pixel budget, video sampling, whether inference runs two stages,
  and the training recipe and validation metrics for the record;
- `adapter/`: the peft LoRA adapter (`adapter_model.safetensors` + `adapter_config.json`) when the
  run used LoRA. The file stays an adapter, so one base serves many; `Scorer.load` merges it into
  its own loaded copy (W + BA once, instead of two extra matmuls per layer and token: ~8 % of the
  compact decoder's time on CPU);
- `weights.safetensors`: every other weight that trained (the vision encoder in VITAL's
  encoder-centred mode, the projector in warm-up, everything in full fine-tuning).

Loading rebuilds the base, applies the adapter and copies the weights, all from safetensors and
with `trust_remote_code` off, then casts to the requested dtype (docs/compact-backend.md
has what bf16 does to the compact scorer's speed and scores). The base itself is referenced, not
copied: a 7B checkpoint stays in the user's cache, and the tiny model is rebuilt bit for bit from
its seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qualitune.errors import QualituneError
from qualitune.vlm.scoring import MAX_INVALID_MASS, check_max_invalid_mass
from qualitune.vlm.tasks import AnswerFormat

if TYPE_CHECKING:
    import torch

SPEC_FILE = "qualitune_scorer.json"
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1


@dataclass
class ScorerSpec:
    """What it takes to rebuild and prompt a trained scorer (written as `qualitune_scorer.json`)."""

    base_model: str
    answer_format: dict
    base_seed: int = 0
    dtype: str = "auto"
    min_pixels: int = 56 * 56
    max_pixels: int = 448 * 448
    video_mode: str = "frames"
    n_frames: int = 2
    two_stage: bool = False
    describe_max_new_tokens: int = 48
    trust_remote_code: bool = False
    # `expected` mode: an item with more answer probability off the valid answers than this is
    # unparsed, not scored (qualitune.vlm.scoring); travels with the scorer, so the CLI, evaluate,
    # the registry gate and serving apply one rule. Scorers written before it existed get 0.5.
    max_invalid_mass: float = MAX_INVALID_MASS
    # The compact backend's probe-anchored quality token: its number of anchor embeddings (0: none;
    # scorers written before it existed have none). Loading adds it before the weights go in.
    anchor_tokens: int = 0
    recipe: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.max_invalid_mass = check_max_invalid_mass(self.max_invalid_mass)

    @property
    def fmt(self) -> AnswerFormat:
        return AnswerFormat(**self.answer_format)

    @classmethod
    def read(cls, directory: str | Path) -> ScorerSpec:
        path = Path(directory) / SPEC_FILE
        if not path.is_file():
            raise QualituneError(
                f"{directory} is not a qualitune scorer (no {SPEC_FILE}); train one with `dvc repro train` "
                "or pass the folder the train stage wrote (models/scorer)"
            )
        data = json.loads(path.read_text())
        if data.get("format_version", 1) > FORMAT_VERSION:
            raise QualituneError(f"{path} was written by a newer qualitune (format {data['format_version']})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, directory: str | Path) -> None:
        Path(directory, SPEC_FILE).write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")


def save_scorer(
    model: torch.nn.Module,
    spec: ScorerSpec,
    out_dir: str | Path,
    *,
    extra_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write adapter and/or trained weights plus the spec; replaces a previous scorer in `out_dir`.

    `extra_weights` are frozen weights that nevertheless differ from the base, e.g. a vision
    encoder transferred from another scorer (VITAL): without them, reloading would rebuild the
    base's own encoder. Fitted frozen weights (the compact anchor) are stored too."""
    import shutil

    from safetensors.torch import save_file

    from qualitune.vlm.trainable import fitted_weights, non_lora_trainable

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(tmp / ADAPTER_DIR), safe_serialization=True)
    weights = {**(extra_weights or {}), **fitted_weights(model), **non_lora_trainable(model)}
    if weights:
        save_file(weights, str(tmp / WEIGHTS_FILE))
    spec.write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def load_scored_model(
    directory: str | Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    merge_adapters: bool = False,
):
    """`(model, tokenizer, spec)` of a scorer directory, in eval mode.

    `merge_adapters` folds a LoRA adapter into the base weights (for inference only: the result is
    no longer a peft model). `dtype` (default: the spec's, `auto` = as the base loads) is applied
    after all weights are in, so adapters and trained weights are cast the same way as the base.
    """
    import torch
    from safetensors.torch import load_file

    from qualitune.vlm.model import load_model, resolve_dtype
    from qualitune.vlm.trainable import load_weights

    directory = Path(directory)
    spec = ScorerSpec.read(directory)
    if spec.trust_remote_code:
        raise QualituneError("this scorer asks for trust_remote_code; qualitune never enables it on its own")
    model, tokenizer = load_model(spec.base_model, dtype=dtype or spec.dtype, seed=spec.base_seed)
    if spec.anchor_tokens:
        from qualitune.vlm.backends.compact.anchor import add_anchor

        add_anchor(model, spec.anchor_tokens)
    if (directory / ADAPTER_DIR).is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(directory / ADAPTER_DIR), is_trainable=False)
    if (directory / WEIGHTS_FILE).is_file():
        load_weights(model, load_file(str(directory / WEIGHTS_FILE)), what=str(directory / WEIGHTS_FILE))
    if merge_adapters and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target = resolve_dtype(dtype or spec.dtype)
    if isinstance(target, torch.dtype) and any(p.dtype != target for p in model.parameters()):
        model = model.to(target)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer, spec
