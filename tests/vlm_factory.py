"""A small training manifest on real PNG files, shaped like the `pmod` stage's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from media_factory import write_image
from qualitune.vlm.trainable import LoraSettings

# The recipe the tiny-model training tests are written against: the library's defaults are the
# pipeline's real recipe (params.yaml's train section), tuned for the compact backend on ~1,000
# photos, not for 16 toy images. Tests state this one instead of inheriting whatever ships.
TOY_RECIPE = {
    "tuning": "lora",
    "seed": 42,
    "weight_decay": 0.0,
    "lr_scheduler": "linear",
    "warmup_ratio": 0.03,
    "checkpoint_every": 0,
    "lora": LoraSettings(r=16, alpha=32, dropout=0.05),
}


def training_frame(root: Path, n: int = 16, splits: tuple[str, ...] = ("train",)) -> pd.DataFrame:
    """`n` PNGs with MOS spread over 1-5, PMOD columns and descriptions; rows cycle through `splits`."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = Path(root) / f"img{i}.png"
        write_image(path, seed=i, size=(64 + 8 * (i % 3), 72))
        mos = 1.0 + 4.0 * i / max(1, n - 1)
        p = np.exp(-0.5 * ((np.arange(1, 6) - mos) / 0.6) ** 2)
        p /= p.sum()
        rows.append(
            {
                "item_id": f"img{i}",
                "path": str(path),
                "media": "image",
                "mos": mos,
                "mos_std": 0.5,
                "mos_norm": mos,
                "split": splits[i % len(splits)],
                "dataset": "test",
                "scale_min": 1.0,
                "scale_max": 5.0,
                "pmod_mean": float(np.clip(mos + rng.normal(0, 0.3), 1, 5)),
                **{f"pmod_p{k + 1}": float(p[k]) for k in range(5)},
                "description": "strong blur, heavy noise" if mos < 3 else "sharp, clean, well exposed",
            }
        )
    return pd.DataFrame(rows)


def write_flat_or_noisy(path: Path, kind: str, rng: np.random.Generator) -> str:
    """A 64x64 PNG that is one flat colour ("flat", MOS 5 in tests) or uniform noise ("noisy", MOS 1):
    two kinds the tiny model learns to tell apart in seconds. Draws from `rng` in call order."""
    from PIL import Image

    if kind == "noisy":
        arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    else:
        arr = np.full((64, 64, 3), rng.integers(40, 200, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return str(path)


def run_stages_in(project: Path, *stages) -> None:
    """Run stage modules' `main` with the project's params.yaml, from inside the project folder
    (every path in params is relative to the project root)."""
    import os

    cwd = os.getcwd()
    os.chdir(project)
    try:
        for stage in stages:
            assert stage.main(["--params", "params.yaml"]) == 0, stage.__name__
    finally:
        os.chdir(cwd)


def tiny_scorer_dir(out: Path, **spec) -> Path:
    """A scorer folder holding only its spec: the untrained tiny model (seed 1), loaded at scoring time.

    Its random weights put almost no probability on any valid answer (invalid mass ~1), so the
    spec accepts every item (`max_invalid_mass` 1.0) unless a test says otherwise: these tests check
    the plumbing around scores, `test_vlm_scoring` checks the threshold itself."""
    from qualitune.scorer import ScorerSpec
    from qualitune.vlm.model import TINY_NAME

    out.mkdir(parents=True)
    ScorerSpec(
        **{
            "base_model": TINY_NAME,
            "base_seed": 1,
            "answer_format": {"kind": "integer", "lo": 10, "hi": 50},
            "max_pixels": 84 * 84,
            "max_invalid_mass": 1.0,
            **spec,
        }
    ).write(out)
    return out


def flat_or_noisy_scorer(train_rows: list[dict], out: Path) -> Path:
    """A scorer folder of the tiny model fine-tuned (full, 15 epochs) on `train_rows` of flat (MOS 5)
    and noisy (MOS 1) images: it tells the two apart on unseen ones (the registry's good challenger,
    serving's champion)."""
    from qualitune.scorer import ScorerSpec, save_scorer
    from qualitune.training import TrainSettings, train
    from qualitune.vlm.inputs import make_image_processor
    from qualitune.vlm.model import TINY_NAME, load_model

    model, tok = load_model(TINY_NAME)
    settings = TrainSettings(
        **{**TOY_RECIPE, "tuning": "full", "warmup_ratio": 0.0}, epochs=15, batch_size=4, lr=3e-3
    )
    df = pd.DataFrame(train_rows).drop(columns="split")
    result = train(model, tok, make_image_processor(56 * 56, 84 * 84), df, settings, n_frames=1)
    spec = ScorerSpec(
        base_model=TINY_NAME, answer_format=settings.fmt.to_dict(), max_pixels=84 * 84, max_invalid_mass=1.0
    )
    return save_scorer(result.model, spec, out)
