"""The compact backend's frozen vision encoder on a fast runtime: ONNX Runtime, else TorchScript.

Why: about half of scoring a photo with the compact backend on 2 CPU cores is its EfficientNet-Lite0
pass at 384². ONNX Runtime's fused fp32 kernels run that depthwise-heavy network faster than
PyTorch's (even TorchScript-frozen, conv+BN folded, channels-last) with the same numbers (relative
difference ~3e-6): the whole scorer went from 8.5 to 13 photos/s (docs/compact-backend.md). bf16 in PyTorch was
slower than this (11.4) and moves scores by tenths of a point on the 10-50 scale.

The exported graph depends only on the encoder's weights and the input size, so it is written once
to qualitune's cache (`<cache>/onnx/<name>-<size>-<weights digest>.onnx`, atomically) and reused by
every later load; an encoder whose weights changed (VITAL's encoder-centred training, a transfer)
gets a new digest and a new file. Without `onnxruntime` installed, or if export fails, callers use
TorchScript instead (and log why): a slower path, never a different result. `build_fast_encoder`
makes that choice (`QUALITUNE_ENCODER_RUNTIME`: auto, onnxruntime or torchscript).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qualitune import cache
from qualitune.errors import QualituneError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnxruntime", "torchscript")
RUNTIME_ENV = "QUALITUNE_ENCODER_RUNTIME"
_OPSET = 17


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def requested_runtime() -> str:
    """The encoder runtime asked for in `$QUALITUNE_ENCODER_RUNTIME` (default `auto`)."""
    value = os.environ.get(RUNTIME_ENV, "auto").strip().lower() or "auto"
    if value not in RUNTIMES:
        raise QualituneError(f"{RUNTIME_ENV}={value!r}: use one of {', '.join(RUNTIMES)}")
    return value


def weights_digest(module: nn.Module) -> str:
    """SHA-1 over every parameter and buffer (names, shapes and bytes): the cache key of an export."""
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def export_onnx(module: nn.Module, example: torch.Tensor, target: Path | None) -> bytes:
    """Export `module` (tuple-of-tensors output) with a dynamic batch axis; the spatial size is fixed
    by `example`. Written atomically to `target` when given (a failed write only skips the cache)."""
    buf = io.BytesIO()
    n_out = len(module(example[:1]))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TF-same padding reads shapes: fixed per exported size
        torch.onnx.export(
            module,
            (example[:1],),
            buf,
            dynamo=False,
            input_names=["pixels"],
            output_names=[f"out{i}" for i in range(n_out)],
            dynamic_axes={"pixels": {0: "batch"}, **{f"out{i}": {0: "batch"} for i in range(n_out)}},
            opset_version=_OPSET,
        )
    data = buf.getvalue()
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=target.name + ".", dir=target.parent)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except OSError as exc:
            log.warning(
                "could not cache the ONNX encoder at %s (%s); it is re-exported on each load", target, exc
            )
    return data


class OrtEncoder:
    """`module`'s forward on ONNX Runtime's CPU provider: tensors in, a tuple of tensors out."""

    def __init__(self, module: nn.Module, example: torch.Tensor, *, name: str, cache_dir: Path | None):
        import onnxruntime as ort

        module = module.eval()
        size = "x".join(str(s) for s in example.shape[1:])
        target = None
        if cache_dir is not None:
            target = cache_dir / "onnx" / f"{name}-{size}-{weights_digest(module)[:20]}.onnx"
        if target is not None and target.is_file():
            data = target.read_bytes()
        else:
            data = export_onnx(module, example, target)
            log.info("exported %s to ONNX (%s)", name, target or "in memory")
        self.path = target
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The encoder alternates with PyTorch's decoder on the same cores: ORT threads that spin after
        # each run would steal them (measured on 2 cores: 13.4 vs 12.5 photos/s with spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pixels = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {"pixels": pixels}))


__all__ = [
    "RUNTIMES",
    "RUNTIME_ENV",
    "OrtEncoder",
    "export_onnx",
    "onnxruntime_available",
    "requested_runtime",
    "weights_digest",
]


def build_fast_encoder(features: nn.Module, x: torch.Tensor):
    """A fast, frozen copy of the encoder for inputs shaped like `x`.

    `features` maps pixels to the projector's inputs and holds the raw feature maps as
    `features.maps`. On CPU float32 with `onnxruntime` installed (and the runtime not forced to
    TorchScript) the result is an `OrtEncoder` over `features.maps` (the caller pools its maps);
    otherwise `features` traced and frozen in channels-last layout (it returns the pooled features).
    """
    runtime = requested_runtime()
    if runtime != "torchscript" and x.device.type == "cpu" and x.dtype == torch.float32:
        if onnxruntime_available():
            try:
                return OrtEncoder(
                    copy.deepcopy(features.maps),
                    x[:1].detach(),
                    name="efficientnet-lite0",
                    cache_dir=cache.cache_dir(),
                )
            except Exception as exc:  # noqa: BLE001 -- any export/runtime failure: the slower path
                if runtime == "onnxruntime":
                    raise RuntimeError(f"{RUNTIME_ENV}=onnxruntime, but it failed: {exc}") from exc
                log.warning("ONNX Runtime encoder unavailable (%s); using TorchScript", exc)
        elif runtime == "onnxruntime":
            raise RuntimeError(f"{RUNTIME_ENV}=onnxruntime, but onnxruntime is not installed")
    module = copy.deepcopy(features).eval().to(memory_format=torch.channels_last)
    example = x[:1].contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TF-same padding reads shapes: fixed per traced size
        return torch.jit.freeze(torch.jit.trace(module, example))
