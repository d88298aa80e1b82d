"""An on-disk store of the compact backend's frozen-encoder features, shared by stages and runs.

Why: one pipeline run asks the same frozen EfficientNet for the same photos many times: in the
first epoch of PMOD pre-training, in the train stage's validation, in each of evaluate's scoring
passes, for the linear probe over every split, in register's comparison and in every Optuna trial.
On 2 cores the encoder is about half of a photo's scoring time, and each process (each DVC stage)
starts with an empty in-memory cache. Features depend only on the pixels the encoder sees and on
its weights, so they are stored under a digest of the weights (a trained or transferred encoder
gets another folder, never a stale entry) and the content key of the pixels
(`CompactVisual.pixel_keys`, which covers the resize to `image_size`).

Layout: `<root>/<weights digest>/<key[:2]>/<key>.pt`, one small file per photo (~37 KB),
written to a temporary name and renamed, so concurrent writers (parallel Optuna workers) and an
interrupted run never leave a half-written entry that a reader would take. An entry that cannot
be read is treated as missing and rewritten. The pipeline's store is `model.feature_cache`
(`.cache/features`, beside the annotators' cache); deleting the folder only costs recomputation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = 1
"""Bumped when what an entry holds changes (pooling, dtype), so old entries are never read."""


def weights_digest(module: torch.nn.Module, *extra: object) -> str:
    """A digest of every parameter and buffer of `module` (names, shapes, dtypes, values) and of
    `extra` (settings that change the features, e.g. image size and grid)."""
    h = hashlib.sha1(f"format={FORMAT};{extra!r}".encode())
    for name, t in sorted({**dict(module.named_parameters()), **dict(module.named_buffers())}.items()):
        data = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(data.shape)}:{data.dtype};".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


class FeatureStore:
    """(global, grid) feature pairs by content key, for one encoder's weights."""

    def __init__(self, root: str | Path, digest: str):
        self.root = Path(root)
        self.dir = self.root / digest
        self.hits = 0
        self.writes = 0

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            value = (entry["global"], entry["grid"])
        except Exception as exc:  # noqa: BLE001 -- a damaged entry is a miss, recomputed and rewritten
            log.debug("feature store: unreadable entry %s (%s); recomputing it", path, exc)
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save({"global": value[0].contiguous(), "grid": value[1].contiguous()}, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1


def attach_feature_store(model: torch.nn.Module, root: str | Path | None) -> bool:
    """Give a compact model's vision module the on-disk store at `root` (None: detach it).
    Returns whether the model has such a module; other backends have nothing to attach to."""
    from qualitune.vlm.unwrap import unwrap_model

    visual = getattr(getattr(unwrap_model(model), "model", None), "visual", None)
    if not hasattr(visual, "store_root"):
        return False
    visual.store_root = Path(root) if root else None
    return True


__all__ = ["FORMAT", "FeatureStore", "attach_feature_store", "weights_digest"]
