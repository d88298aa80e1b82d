"""The compact backend's image processor: whole frames resized to the encoder's one input size."""

from __future__ import annotations

import numpy as np

from qualitune.vlm.backends.compact.efficientnet import INPUT_MEAN, INPUT_STD


class CompactImageProcessor:
    """Qwen's image-processor call, for the compact encoder: `__call__(images=[...],
    return_tensors="np")` gives `pixel_values` (N, 3, S, S), normalised for EfficientNet-Lite, and
    `image_grid_thw` rows (1, 1, n_visual_tokens), so `encode_batch` expands each image into
    `n_visual_tokens` pad tokens (merge size 1). Images are resized whole to S x S (bicubic): the
    scorer sees the entire frame, as the raters did."""

    merge_size = 1
    temporal_patch_size = 1

    def __init__(self, image_size: int, n_tokens: int):
        self.image_size = int(image_size)
        self.n_tokens = int(n_tokens)
        self.patch_size = self.image_size

    def prepare(self, image):
        """The resize `__call__` does, on its own: `Scorer.score_paths` runs it in its decode
        thread, ahead of the model (an image already at the size passes through untouched)."""
        from PIL import Image

        im = image.convert("RGB")
        size = (self.image_size, self.image_size)
        return im if im.size == size else im.resize(size, Image.BICUBIC)

    def __call__(self, images, return_tensors: str = "np") -> dict[str, np.ndarray]:
        from PIL import Image

        images = [images] if isinstance(images, Image.Image) else list(images)
        arrays = [np.asarray(self.prepare(im), dtype=np.float32).transpose(2, 0, 1) for im in images]
        pixels = (np.stack(arrays) / 255.0 - INPUT_MEAN) / INPUT_STD
        grid = np.tile(np.array([[1, 1, self.n_tokens]], dtype=np.int64), (len(arrays), 1))
        return {"pixel_values": pixels.astype(np.float32), "image_grid_thw": grid}
