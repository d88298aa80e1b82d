"""Batch runner and CLI: one row per input, per-item errors, bad inputs, cache, videos."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data
from skimage.transform import resize

import qualitune.annotate as annotate_mod
from qualitune.annotate import annotate_paths
from qualitune.cli import main

ANNS = ["niqe", "brisque", "piqe", "sharpness"]


def _photo(h: int = 192, w: int = 256) -> np.ndarray:
    img = resize(data.astronaut(), (h, w), anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    rgb = _photo()
    files = {}
    files["good"] = tmp_path / "good.png"
    Image.fromarray(rgb).save(files["good"])
    files["grey"] = tmp_path / "grey.png"
    Image.fromarray(rgb).convert("L").save(files["grey"])
    files["tiny"] = tmp_path / "tiny.png"
    Image.fromarray(rgb[:1, :1]).save(files["tiny"])
    files["png16"] = tmp_path / "sixteen.png"
    grey16 = (rgb.mean(axis=2) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(files["png16"])
    files["rgba"] = tmp_path / "alpha.png"
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["cmyk"] = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(files["cmyk"], quality=90)
    files["corrupt"] = tmp_path / "corrupt.jpg"
    good_jpg = tmp_path / "tmp.jpg"
    Image.fromarray(rgb).save(good_jpg, quality=90)
    files["corrupt"].write_bytes(good_jpg.read_bytes()[:600])
    good_jpg.unlink()
    return files


def test_six_bad_inputs_each_get_score_or_clear_error(bad_inputs: dict[str, Path]) -> None:
    keys = list(bad_inputs)
    df = annotate_paths([bad_inputs[k] for k in keys], ANNS, workers=2)
    assert list(df["path"]) == [str(bad_inputs[k]) for k in keys]  # one row per input, order kept
    assert list(df.columns) == ["path", *ANNS, "error"]
    row = df.set_index(pd.Index(keys))
    for k in ("good", "grey", "png16", "rgba", "cmyk"):
        assert row.loc[k, "error"] == "", (k, row.loc[k, "error"])
        assert all(math.isfinite(row.loc[k, a]) for a in ANNS), k
    # 16-bit PNG is scaled, not clipped: its NIQE is close to the 8-bit grey one's
    assert abs(row.loc["png16", "niqe"] - row.loc["grey", "niqe"]) < 0.5
    tiny = row.loc["tiny"]
    assert math.isnan(tiny["niqe"]) and math.isnan(tiny["brisque"]) and math.isnan(tiny["piqe"])
    assert math.isfinite(tiny["sharpness"]) is False  # 1x1 has no 3x3 neighbourhood
    assert "niqe: image too small for niqe: 1x1, needs >= 96x96" in tiny["error"]
    assert "brisque: image too small for brisque: 1x1" in tiny["error"]
    bad = row.loc["corrupt"]
    assert all(math.isnan(bad[a]) for a in ANNS)
    assert "cannot decode image" in bad["error"] and "corrupt.jpg" in bad["error"]


def test_missing_file_and_unknown_extension_are_rows_not_crashes(tmp_path: Path) -> None:
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    df = annotate_paths([tmp_path / "nope.png", odd], ["piqe"], workers=1)
    assert len(df) == 2
    assert "file not found" in df.loc[0, "error"]
    assert "unsupported extension" in df.loc[1, "error"]


def test_cache_skips_scored_items_and_rescores_modified(tmp_path: Path, monkeypatch) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(_photo()).save(a)
    Image.fromarray(_photo()[:, ::-1]).save(b)
    cache = tmp_path / "cache"
    first = annotate_paths([a, b], ["piqe", "sharpness"], workers=1, cache_dir=cache)
    assert first.attrs["n_scored"] == 4 and first.attrs["n_cached"] == 0

    calls: list[str] = []
    real = annotate_mod.score_file

    def counting(path, names, n_frames):
        calls.extend(f"{path}:{n}" for n in names)
        return real(path, names, n_frames)

    monkeypatch.setattr(annotate_mod, "score_file", counting)
    second = annotate_paths([a, b], ["piqe", "sharpness"], workers=1, cache_dir=cache)
    assert calls == []
    assert second.attrs["n_cached"] == 4
    pd.testing.assert_frame_equal(first, second)

    Image.fromarray(_photo(160, 240)).save(b)  # modified content -> new hash -> rescored
    third = annotate_paths([a, b], ["piqe", "sharpness"], workers=1, cache_dir=cache)
    assert sorted(calls) == [f"{b}:piqe", f"{b}:sharpness"]
    assert third.loc[0, "piqe"] == first.loc[0, "piqe"]
    assert third.loc[1, "piqe"] != first.loc[1, "piqe"]
    # a new annotator on cached items only scores that annotator
    calls.clear()
    annotate_paths([a], ["piqe", "contrast"], workers=1, cache_dir=cache)
    assert calls == [f"{a}:contrast"]


def test_parallel_equals_serial(tmp_path: Path) -> None:
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.roll(_photo(), 17 * i, axis=1)).save(p)
        paths.append(p)
    serial = annotate_paths(paths, ANNS, workers=1)
    parallel = annotate_paths(paths, ANNS, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_video_frames_are_averaged(tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    frames = [np.roll(_photo(), 8 * i, axis=1) for i in range(6)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=6)
        stream.width, stream.height, stream.pix_fmt = 256, 192, "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    from qualitune.annotators import get_annotator
    from qualitune.media import sample_frames

    df = annotate_paths([path], ["piqe"], n_frames=2, workers=1)
    assert df.loc[0, "error"] == ""
    expected = np.mean([get_annotator("piqe").score(np.asarray(f)) for f in sample_frames(path, 2)])
    assert df.loc[0, "piqe"] == pytest.approx(expected)


def test_unknown_annotator_fails_before_scoring(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown annotator 'bogus'; known:"):
        annotate_paths([tmp_path / "x.png"], ["niqe", "bogus"])


def test_cli_writes_csv_and_summary(bad_inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out" / "scores.csv"
    folder = bad_inputs["good"].parent
    rc = main(["annotate", str(folder), "--annotators", "piqe,contrast", "--out", str(out), "--workers", "1"])
    assert rc == 1  # two files failed: every row is written, the status says so
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == ["path", "piqe", "contrast", "error"]
    assert df["path"].tolist() == sorted(str(p) for p in bad_inputs.values())
    summary = capsys.readouterr().out
    assert "annotated 7 items" in summary and "2 with errors" in summary


def test_cli_unknown_annotator_is_usage_error(tmp_path: Path, capsys) -> None:
    rc = main(["annotate", str(tmp_path), "--annotators", "nope", "--out", str(tmp_path / "o.csv")])
    assert rc != 0
    assert "known:" in capsys.readouterr().err


def test_cli_missing_path_is_an_error_not_a_row(tmp_path: Path, capsys) -> None:
    """Regression: `qualitune annotate /no/such/dir` said "unsupported extension ''" and exited 0."""
    out = tmp_path / "o.csv"
    rc = main(
        ["annotate", str(tmp_path / "no" / "such" / "dir"), "--annotators", "contrast", "--out", str(out)]
    )
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "1 path(s) not found" in err and "no/such/dir" in err


def test_cli_reports_links_out_of_the_folder_without_reading_them(tmp_path: Path, capsys) -> None:
    """Found by benchmarks/reliability.py: `annotate DIR` followed a symlink in DIR to a file
    elsewhere. It is now a row with the reason, and the file is never opened."""
    from qualitune.cli import main

    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "in.png")
    Image.fromarray(np.full((32, 32, 3), 30, np.uint8)).save(elsewhere / "secret.png")
    (folder / "link.png").symlink_to(elsewhere / "secret.png")
    (folder / "inner.png").symlink_to(folder / "in.png")  # a link inside the folder is fine
    out = tmp_path / "scores.csv"
    rc = main(["annotate", str(folder), "--annotators", "contrast", "--out", str(out), "--workers", "1"])
    df = pd.read_csv(out, keep_default_na=False).set_index("path")
    assert rc == 1 and len(df) == 3
    assert df.loc[str(folder / "in.png"), "error"] == "" and df.loc[str(folder / "inner.png"), "error"] == ""
    row = df.loc[str(folder / "link.png")]
    assert "outside the folder being read" in row["error"] and row["contrast"] == ""
    assert "1 with errors" in capsys.readouterr().out
