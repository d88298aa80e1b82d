"""Dataset adapters on tiny copies of each dataset's real layout, written here with real media files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qualitune import cli
from qualitune.ingest import FORMATS, ingest, ingest_to_file
from qualitune.manifest import REQUIRED, manifest_metadata, read_manifest
from qualitune.stages import ingest as ingest_stage


def _image(path: Path, seed: int = 0) -> Path:
    """A real 8x8 image in the format the extension names (JPEG, PNG, BMP)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    img.save(path, format=fmt)
    return path


def _mp4(path: Path, frames: int = 3) -> Path:
    """A real, decodable 16x16 MPEG-4 clip."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _by_name(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(name=df["item_id"].str.split("/", n=1).str[1]).set_index("name")


# ---------------------------------------------------------------------------------------------- koniq


def _koniq(root: Path, with_sets: bool = True, image_dir: str = "1024x768") -> None:
    rows = [
        ("100.jpg", 1.0, 0.1, "training"),
        ("200.jpg", 5.0, 0.2, "validation"),
        ("300.jpg", 3.0, 0.3, "test"),
        ("400.jpg", 2.5, 0.4, "training"),  # its file is missing
    ]
    pd.DataFrame(
        {
            "image_name": [r[0] for r in rows],
            "c1": [5, 0, 1, 2],
            "c2": [0, 0, 1, 2],
            "c3": [0, 0, 1, 1],
            "c4": [0, 0, 1, 0],
            "c5": [0, 5, 1, 0],
            "c_total": [5, 5, 5, 5],
            "MOS": [r[1] for r in rows],
            "SD": [r[2] for r in rows],
            "MOS_zscore": [0.0, 100.0, 50.0, 40.0],
        }
    ).to_csv(root / "koniq10k_scores_and_distributions.csv", index=False)
    if with_sets:
        pd.DataFrame(
            {"image_name": [r[0] for r in rows], "MOS": [r[1] for r in rows], "set": [r[3] for r in rows]}
        ).to_csv(root / "koniq10k_distributions_sets.csv", index=False)
    _image(root / image_dir / "100.jpg")
    _image(root / image_dir / "200.JPG")  # case mismatch with the label
    _image(root / image_dir / "300.jpg")


def test_koniq_official_split_scale_and_attributes(tmp_path, caplog):
    _koniq(tmp_path)
    with caplog.at_level(logging.WARNING, logger="qualitune.ingest"):
        df = ingest("koniq10k", tmp_path)
    assert list(df.columns[: len(REQUIRED)]) == list(REQUIRED)
    d = _by_name(df)
    assert len(d) == 4
    assert d.loc["100.jpg", "mos_norm"] == pytest.approx(1.0)
    assert d.loc["200.jpg", "mos_norm"] == pytest.approx(5.0)
    assert d.loc["200.jpg", "mos_std"] == pytest.approx(0.2)
    assert d["split"].to_dict() == {
        "100.jpg": "train",
        "200.jpg": "val",
        "300.jpg": "test",
        "400.jpg": "train",
    }
    assert d.loc["200.jpg", "path"].endswith("1024x768/200.JPG") and Path(d.loc["200.jpg", "path"]).is_file()
    # the missing file keeps its row with the path where it was expected
    assert (
        d.loc["400.jpg", "path"].endswith("1024x768/400.jpg") and not Path(d.loc["400.jpg", "path"]).exists()
    )
    assert {"c1", "c2", "c3", "c4", "c5", "c_total", "MOS_zscore"} <= set(df.columns)
    assert d.loc["200.jpg", "c5"] == 5
    assert df.attrs["qualitune"]["counts"]["missing_files"] == 1
    assert "1 of 4 label row(s) have no file" in caplog.text


def test_koniq_without_set_file_uses_seeded_split_and_small_images(tmp_path):
    _koniq(tmp_path, with_sets=False, image_dir="512x384")
    df = ingest("koniq10k", tmp_path, seed=3)
    assert df["split"].isin(["train", "val", "test"]).all()
    assert df.attrs["qualitune"]["split"]["source"] == "seeded"
    assert df["path"].str.contains("512x384/").all()
    assert df.attrs["qualitune"]["counts"]["missing_files"] == 1


def test_koniq_reads_scores_from_the_split_file_alone(tmp_path):
    _koniq(tmp_path)
    sets = pd.read_csv(tmp_path / "koniq10k_distributions_sets.csv")
    scores = pd.read_csv(tmp_path / "koniq10k_scores_and_distributions.csv")
    scores.merge(sets[["image_name", "set"]]).to_csv(
        tmp_path / "koniq10k_distributions_sets.csv", index=False
    )
    (tmp_path / "koniq10k_scores_and_distributions.csv").unlink()
    d = _by_name(ingest("koniq10k", tmp_path))
    assert d.loc["300.jpg", "split"] == "test" and d.loc["300.jpg", "mos_norm"] == pytest.approx(3.0)
    assert "set" not in d.columns and "c1" in d.columns


def test_extension_mismatch_matches_by_stem_and_is_counted(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    pd.DataFrame({"name": ["a.png"], "mos": [3]}).to_csv(tmp_path / "labels.csv", index=False)
    df = ingest("csv", tmp_path, scale=(1, 5))
    assert df["path"].iloc[0].endswith("images/a.jpg")
    assert df.attrs["qualitune"]["counts"]["resolved_by_stem"] == 1


# ---------------------------------------------------------------------------------------------- spaq


def test_spaq_excel_scale_and_alternative_image_folder(tmp_path):
    (tmp_path / "Annotations").mkdir()
    pd.DataFrame(
        {
            "Image name": ["00001.jpg", "00002.jpg", "00003.jpg"],
            "MOS": [50, 0, 100],
            "Brightness": [40.5, 60, 70],
            "Colorfulness": [1, 2, 3],
            "Contrast": [1, 2, 3],
            "Noisiness": [1, 2, 3],
            "Sharpness": [1, 2, 3],
        }
    ).to_excel(tmp_path / "Annotations" / "MOS and Image attribute scores.xlsx", index=False)
    for i in (1, 2, 3):
        _image(tmp_path / "Dataset" / "TestImage" / f"0000{i}.jpg", seed=i)
    d = _by_name(ingest("spaq", tmp_path))
    assert d.loc["00001.jpg", "mos_norm"] == pytest.approx(3.0)
    assert d.loc["00002.jpg", "mos_norm"] == pytest.approx(1.0)
    assert d.loc["00003.jpg", "mos_norm"] == pytest.approx(5.0)
    assert d.loc["00001.jpg", "Brightness"] == pytest.approx(40.5)
    assert all(Path(p).is_file() for p in d["path"])
    assert (d["dataset"] == "spaq").all() and (d["scale_max"] == 100).all()


# ---------------------------------------------------------------------------------------------- livec


def _livec(root: Path) -> None:
    from scipy.io import savemat

    names = [f"t{i}.bmp" for i in range(1, 8)] + ["10.bmp", "a b (1).bmp", "12.bmp"]
    cells = np.empty((len(names), 1), dtype=object)
    cells[:, 0] = names
    mos = np.array([[50.0] * 7 + [0.0, 50.0, 100.0]])
    std = np.array([[10.0] * 10])
    (root / "Data").mkdir(parents=True)
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    savemat(root / "Data" / "AllStdDev_release.mat", {"AllStdDev_release": std})
    _image(root / "Images" / "10.BMP")
    _image(root / "Images" / "a b (1).bmp")
    _image(root / "Images" / "12.bmp")
    for i in range(1, 8):
        _image(root / "Images" / "trainingImages" / f"t{i}.bmp")


def test_livec_drops_t1_to_t7_and_records_it(tmp_path):
    _livec(tmp_path)
    df = ingest("livec", tmp_path)
    d = _by_name(df)
    assert sorted(d.index) == ["10.bmp", "12.bmp", "a b (1).bmp"]
    assert d.loc["10.bmp", "mos_norm"] == pytest.approx(1.0)
    assert d.loc["a b (1).bmp", "mos_norm"] == pytest.approx(3.0)
    assert d.loc["10.bmp", "mos_std"] == pytest.approx(10.0)
    assert all(Path(p).is_file() for p in d["path"])  # "10.bmp" found as "10.BMP"
    dropped = df.attrs["qualitune"]["dropped_rows"]
    assert dropped[0]["count"] == 7 and "t1-t7" in dropped[0]["reason"]
    assert "(3 of 10 remain" in dropped[0]["reason"]  # the real count, not the release's 1,162

    kept = ingest("livec", tmp_path, keep_training_images=True)
    assert len(kept) == 10 and kept["path"].map(lambda p: Path(p).is_file()).all()


# ---------------------------------------------------------------------------------------------- kadid


def test_kadid_parses_names_std_and_groups_split_by_reference(tmp_path):
    rows = []
    for ref in range(1, 13):
        for dist in (1, 10):
            for level in (1, 5):
                name = f"I{ref:02d}_{dist:02d}_{level:02d}.png"
                rows.append((name, f"I{ref:02d}.png", 1 + level * 0.8, 0.25))
                _image(tmp_path / "images" / name, seed=len(rows))
    pd.DataFrame(rows, columns=["dist_img", "ref_img", "dmos", "var"]).to_csv(
        tmp_path / "dmos.csv", index=False
    )
    df = ingest("kadid10k", tmp_path, seed=7)
    d = _by_name(df)
    assert len(df) == 48
    assert d.loc["I03_10_05.png", ["ref", "distortion", "level"]].tolist() == ["I03", 10, 5]
    assert d.loc["I03_10_05.png", "distortion_name"] == "jpeg"
    assert d.loc["I03_10_05.png", "mos_norm"] == pytest.approx(5.0)  # 1-5, higher is better
    assert d["mos_std"].eq(0.5).all()  # sqrt(var)
    per_ref = df.groupby("ref")["split"].nunique()
    assert (per_ref == 1).all()  # no content in two splits
    assert df["split"].nunique() >= 2


# ---------------------------------------------------------------------------------------------- biq2021


def test_biq2021_keeps_official_test_and_carves_val_from_train(tmp_path):
    train = [f"ss01 ({i}).jpg" for i in range(20)]
    test = ["ss03 (1).jpg", "ss03 (2).jpg"]
    pd.DataFrame({"Image Name": train, "MOS": [0.5] * 20}).to_csv(
        tmp_path / "Train (Images and MOS).csv", index=False
    )
    pd.DataFrame({"Image Name": test, "MOS": [0.0, 1.0]}).to_csv(
        tmp_path / "Test (Images and MOS).csv", index=False
    )
    for i, n in enumerate(train + test):
        _image(tmp_path / "Images" / (n.replace(".jpg", ".JPG") if i % 2 else n), seed=i)
    df = ingest("biq2021", tmp_path, val_from_train=0.4)
    d = _by_name(df)
    assert d.loc[test, "split"].eq("test").all()
    assert set(d.loc[train, "split"]) == {"train", "val"}
    assert d.loc["ss01 (0).jpg", "mos_norm"] == pytest.approx(3.0)
    assert d.loc["ss03 (2).jpg", "mos_norm"] == pytest.approx(5.0)
    assert all(Path(p).is_file() for p in d["path"])
    assert "val carved" in df.attrs["qualitune"]["split"]["source"]


# ---------------------------------------------------------------------------------------------- lsvq


def test_lsvq_names_without_extension_subfolders_and_1080p(tmp_path):
    _mp4(tmp_path / "ia-batch1" / "clip_a.mp4")
    _mp4(tmp_path / "videos" / "yfcc-batch2" / "clip_b.mp4")
    _mp4(tmp_path / "ia-batch1" / "clip_c.mp4")
    _mp4(tmp_path / "videos" / "hd" / "clip_d.mp4")
    common = {"p1": [1, 2, 3], "height": [16, 16, 16], "width": [16, 16, 16], "frame_number": [3, 3, 3]}
    pd.DataFrame(
        {
            "name": ["ia-batch1/clip_a", "yfcc-batch2/clip_b", "ia-batch1/clip_c"],
            "mos": [0.0, 50.0, 100.0],
            **common,
            "is_test": ["False", "False", "True"],
            "is_valid": ["True", "True", "True"],
        }
    ).to_csv(tmp_path / "labels_train_test.csv", index=False)
    pd.DataFrame(
        {
            "name": ["hd/clip_d", "hd/missing"],
            "mos": [60.0, "n/a"],
            "frame_number": [3, 3],
            "is_test": [True, True],
        }
    ).to_csv(tmp_path / "labels_test_1080p.csv", index=False)
    df = ingest("lsvq", tmp_path, val_from_train=0.0)
    d = _by_name(df)
    assert len(df) == 5 and (df["media"] == "video").all()
    assert d["split"].to_dict() == {
        "ia-batch1/clip_a": "train",
        "yfcc-batch2/clip_b": "train",
        "ia-batch1/clip_c": "test",
        "hd/clip_d": "test",
        "hd/missing": "test",
    }
    assert d.loc["hd/clip_d", "subset"] == "1080p" and d.loc["ia-batch1/clip_a", "subset"] == "main"
    assert d.loc["yfcc-batch2/clip_b", "mos_norm"] == pytest.approx(3.0)
    assert Path(d.loc["yfcc-batch2/clip_b", "path"]).is_file()
    assert d.loc["hd/missing", "path"].endswith("hd/missing.mp4")
    assert np.isnan(d.loc["hd/missing", "mos"])  # unparseable MOS kept as NaN
    assert d.loc["ia-batch1/clip_a", "frame_number"] == 3
    meta = df.attrs["qualitune"]
    assert meta["counts"]["missing_files"] == 1 and meta["counts"]["unparseable_mos"] == 1


# ---------------------------------------------------------------------------------------------- vquala


def test_vquala_overall_mos_attributes_and_scale_option(tmp_path):
    _mp4(tmp_path / "videos" / "gen_001.mp4")
    _mp4(tmp_path / "videos" / "Gen 002 (b).MP4")
    pd.DataFrame(
        {
            "video_name": ["gen_001.mp4", "Gen 002 (b).mp4"],
            "Prompt": ["a cat, playing piano", "sunset"],
            "Traditional_MOS": [3.2, 4.5],
            "Alignment_MOS": [4.1, 4.2],
            "Aesthetic_MOS": [3.8, 4.8],
            "Temporal_MOS": [3.5, 4.1],
            "Overall_MOS": [1.0, 4.4],
        }
    ).to_csv(tmp_path / "train_labels.csv", index=False)
    d = _by_name(ingest("vquala", tmp_path))
    assert d.loc["gen_001.mp4", "mos_norm"] == pytest.approx(1.0)  # default scale 1-5
    assert d.loc["Gen 002 (b).mp4", "mos"] == pytest.approx(4.4)
    assert d.loc["gen_001.mp4", "Prompt"] == "a cat, playing piano"
    assert d.loc["Gen 002 (b).mp4", "Aesthetic_MOS"] == pytest.approx(4.8)
    assert all(Path(p).is_file() for p in d["path"]) and (d["media"] == "video").all()
    wide = _by_name(ingest("vquala", tmp_path, scale=(0, 10), labels="train_labels.csv"))
    assert wide.loc["gen_001.mp4", "mos_norm"] == pytest.approx(1.4)


# ---------------------------------------------------------------------------------------------- generic csv


def _generic(root: Path, split: list[str] | None = None) -> Path:
    _image(root / "images" / "Photo (1).JPG")
    _image(root / "images" / "b.png")
    _mp4(root / "videos" / "clip01.mp4")
    cols = {
        "file": ["photo (1).jpg", "b.png", "videos/clip01.mp4", "gone.jpg"],
        "score": ["1", "5", "3", "not-a-number"],
        "sd": [0.1, 0.2, 0.3, 0.4],
        "source": ["x", "y", "z", "w"],
    }
    if split is not None:
        cols["part"] = split
    pd.DataFrame(cols).to_csv(root / "labels.csv", index=False)
    return root


def test_csv_mixed_media_split_aliases_missing_file_and_nan_mos(tmp_path):
    _generic(tmp_path, split=["training", "valid", "Test", "testing"])
    df = ingest(
        "csv",
        tmp_path,
        labels="labels.csv",
        name_col="file",
        mos_col="score",
        std_col="sd",
        split_col="part",
        scale=(1, 5),
    )
    d = _by_name(df)
    assert d["split"].to_dict() == {
        "photo (1).jpg": "train",
        "b.png": "val",
        "videos/clip01.mp4": "test",
        "gone.jpg": "test",
    }
    assert d["media"].to_dict() == {
        "photo (1).jpg": "image",
        "b.png": "image",
        "videos/clip01.mp4": "video",
        "gone.jpg": "image",
    }
    assert Path(d.loc["photo (1).jpg", "path"]).name == "Photo (1).JPG"
    assert Path(d.loc["videos/clip01.mp4", "path"]).is_file()
    assert not Path(d.loc["gone.jpg", "path"]).exists() and np.isnan(d.loc["gone.jpg", "mos"])
    assert d.loc["b.png", "mos_std"] == pytest.approx(0.2)
    assert d.loc["b.png", "source"] == "y"
    assert df.attrs["qualitune"]["split"]["source"] == "official"  # a val exists: nothing carved


def test_csv_lower_is_better_flips(tmp_path):
    _generic(tmp_path)
    d = _by_name(
        ingest("csv", tmp_path, name_col="file", mos_col="score", scale=(1, 5), higher_is_better=False)
    )
    assert d.loc["photo (1).jpg", "mos_norm"] == pytest.approx(5.0)
    assert d.loc["b.png", "mos_norm"] == pytest.approx(1.0)


def test_csv_media_and_split_columns_are_used_when_present(tmp_path):
    _mp4(tmp_path / "clips" / "c.MP4")
    pd.DataFrame({"name": ["clips/c.mp4"], "mos": [2], "split": ["Training"], "media": ["VIDEO"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    df = ingest("csv", tmp_path, scale=(1, 5), val_from_train=0)
    assert df[["media", "split"]].iloc[0].tolist() == ["video", "train"]
    assert not {"src_media", "src_split"} & set(df.columns)
    assert Path(df["path"].iloc[0]).is_file()


def test_bad_split_value_raises_listing_it(tmp_path):
    _generic(tmp_path, split=["train", "holdout", "test", "train"])
    with pytest.raises(ValueError, match=r"holdout"):
        ingest("csv", tmp_path, name_col="file", mos_col="score", split_col="part", scale=(1, 5))


def test_missing_column_and_file_raise_useful_errors(tmp_path):
    _generic(tmp_path)
    with pytest.raises(ValueError) as err:
        ingest("csv", tmp_path, name_col="file", mos_col="mos", scale=(1, 5))
    msg = str(err.value)
    assert "labels.csv" in msg and "'mos'" in msg and "'score'" in msg and "'file'" in msg
    with pytest.raises(ValueError, match=r"nope\.csv"):
        ingest("csv", tmp_path, labels="nope.csv", scale=(1, 5))
    with pytest.raises(ValueError, match=r"scale"):
        ingest("csv", tmp_path, name_col="file", mos_col="score")
    with pytest.raises(ValueError, match=r"koniq10k_scores_and_distributions\.csv"):
        ingest("koniq10k", tmp_path)
    with pytest.raises(ValueError, match=r"does not take option"):
        ingest("koniq10k", tmp_path, name_col="x")
    with pytest.raises(ValueError, match=r"unknown format"):
        ingest("tid2013", tmp_path)


def test_seeded_split_is_reproducible_and_stable_when_rows_are_added(tmp_path):
    def write(n: int) -> None:
        pd.DataFrame({"name": [f"img{i}.jpg" for i in range(n)], "mos": np.linspace(0, 1, n)}).to_csv(
            tmp_path / "labels.csv", index=False
        )

    write(200)
    first = _by_name(ingest("csv", tmp_path, scale=(0, 1), seed=5))["split"]
    again = _by_name(ingest("csv", tmp_path, scale=(0, 1), seed=5))["split"]
    assert first.equals(again)
    counts = first.value_counts()
    assert set(counts.index) == {"train", "val", "test"} and counts["train"] > counts["val"]
    write(260)
    grown = _by_name(ingest("csv", tmp_path, scale=(0, 1), seed=5))["split"]
    assert grown.loc[first.index].equals(first)
    other = _by_name(ingest("csv", tmp_path, scale=(0, 1), seed=6))["split"]
    assert not other.loc[first.index].equals(first)


def test_paths_relative_inside_cwd_absolute_outside(tmp_path, monkeypatch):
    _generic(tmp_path / "ds")
    monkeypatch.chdir(tmp_path)
    d = _by_name(ingest("csv", "ds", name_col="file", mos_col="score", scale=(1, 5)))
    assert d.loc["b.png", "path"] == "ds/images/b.png"
    monkeypatch.chdir(tmp_path / "ds" / "videos")
    d = _by_name(ingest("csv", tmp_path / "ds", name_col="file", mos_col="score", scale=(1, 5)))
    assert d.loc["b.png", "path"] == (tmp_path / "ds" / "images" / "b.png").as_posix()


# ---------------------------------------------------------------------------------------------- CLI, stage, file


def test_ingest_to_file_writes_metadata(tmp_path):
    _generic(tmp_path)
    out = tmp_path / "m" / "manifest.parquet"
    ingest_to_file("csv", tmp_path, out, name_col="file", mos_col="score", scale=(1, 5), dataset="mine")
    df = read_manifest(out)
    meta = manifest_metadata(out)
    assert len(df) == 4 and df["item_id"].str.startswith("mine/").all()
    assert meta["format"] == "csv" and meta["scale"] == [1.0, 5.0] and meta["higher_is_better"] is True
    assert meta["counts"]["missing_files"] == 1 and meta["options"]["name_col"] == "file"


def test_cli_round_trip_and_help(tmp_path, capsys):
    _generic(tmp_path, split=["train", "test", "test", "train"])
    out = tmp_path / "manifest.parquet"
    argv = [
        "ingest",
        "csv",
        str(tmp_path),
        "--labels",
        "labels.csv",
        "--name-col",
        "file",
        "--mos-col",
        "score",
    ]
    argv += ["--split-col", "part", "--scale", "1", "5", "--val-from-train", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "file not found: 1" in printed and "train 2" in printed
    assert read_manifest(out)["split"].tolist() == ["train", "test", "test", "train"]

    assert cli.main(["ingest", "koniq10k", str(tmp_path), "--out", str(out)]) == 2
    assert "koniq10k_scores_and_distributions.csv" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_:
        cli.main(["ingest", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in FORMATS)


def test_dvc_stage_reads_params_section(tmp_path, monkeypatch):
    _generic(tmp_path / "data" / "raw" / "demo", split=["train", "val", "test", "test"])
    (tmp_path / "params.yaml").write_text(
        """
ingest:
  format: csv
  root: data/raw/demo
  out: data/manifest.parquet
  options: {labels: labels.csv, name_col: file, mos_col: score, std_col: sd, split_col: part, scale: [1, 5]}
  split_ratios: {train: 0.7, val: 0.15, test: 0.15}
  val_from_train: 0.1
  seed: 42
"""
    )
    monkeypatch.chdir(tmp_path)
    assert ingest_stage.main(["--params", "params.yaml"]) == 0
    df = read_manifest("data/manifest.parquet")
    assert df["path"].iloc[1] == "data/raw/demo/images/b.png"
    assert manifest_metadata("data/manifest.parquet")["dataset"] == "demo"


# ---------------------------------------------------------------------------------------------- #20 fuzzing


def test_files_outside_the_root_are_kept_with_a_reason_and_never_read(tmp_path, monkeypatch):
    """Found by benchmarks/reliability.py: a label name with `..`, an absolute name elsewhere or a
    symlink out of the dataset folder made the gate read (and pass) a file that is not the dataset's."""
    from qualitune import validate

    root, elsewhere = tmp_path / "ds", tmp_path / "elsewhere"
    _image(root / "images" / "in.png", seed=1)
    secret = _image(elsewhere / "secret.png", seed=2)
    (root / "images" / "link.png").symlink_to(secret)
    # a DVC checkout with cache.type symlink links every file into .dvc/cache: that stays allowed
    cached = tmp_path / ".dvc" / "cache" / "files" / "md5" / "ab" / "cdef"  # DVC's names have no extension
    _image(cached.with_suffix(".png"), seed=3).rename(cached)
    (root / "images" / "cached.png").symlink_to(cached)
    names = ["in.png", "link.png", "cached.png", "../../elsewhere/secret.png", str(secret)]
    pd.DataFrame({"name": names, "mos": [1, 2, 3, 4, 5]}).to_csv(root / "labels.csv", index=False)
    manifest = ingest("csv", root, scale=(1, 5))
    assert len(manifest) == 5 and manifest.attrs["qualitune"]["counts"]["outside_root"] == 3
    d = _by_name(manifest)
    assert d.loc["in.png", "path_error"] == "" and d.loc["cached.png", "path_error"] == ""
    for name in names[1:2] + names[3:]:
        assert "outside the folder being read" in d.loc[name, "path_error"]
    opened: list[str] = []
    real = validate.check_files
    monkeypatch.setattr(
        validate, "check_files", lambda paths, *a, **k: (opened.extend(paths), real(paths, *a, **k))[1]
    )
    outcome = validate.validate_manifest(manifest, workers=1, render_html=False)
    assert sorted(outcome.valid["item_id"]) == ["ds/cached.png", "ds/in.png"]
    assert len(outcome.quarantine) == 3 and outcome.quarantine["reason"].str.contains("outside").all()
    assert not any("secret" in p or "link" in p for p in opened), opened


@pytest.mark.parametrize("fmt", ["csv", "biq2021"])
def test_a_label_file_with_only_a_header_is_an_error(tmp_path, fmt):
    """Found by the label fuzzing: a header-only file gave an empty manifest (csv) or, for BIQ2021,
    a manifest of the test file alone, without a word."""
    if fmt == "csv":
        (tmp_path / "labels.csv").write_text("name,mos\n")
        with pytest.raises(ValueError, match="has no rows"):
            ingest("csv", tmp_path, scale=(1, 5))
        return
    (tmp_path / "Train (Images and MOS).csv").write_text("Image Name,MOS\n")
    (tmp_path / "Test (Images and MOS).csv").write_text("Image Name,MOS\na.jpg,0.5\n")
    with pytest.raises(ValueError, match=r"Train \(Images and MOS\)\.csv: the labels file has no rows"):
        ingest("biq2021", tmp_path)
