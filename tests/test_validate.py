"""The GX gate: every kind of bad row ends in the quarantine with a clear reason and fails the gate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from media_factory import truncate, write_image, write_mp4
from qualitune.cli import main as cli_main
from qualitune.manifest import make_manifest, read_manifest, write_manifest
from qualitune.validate import GateFailed, run_validation, validate_manifest


def _manifest(tmp_path, rows):
    frame = pd.DataFrame(rows, columns=["name", "path", "mos", "split"])
    return make_manifest(frame, dataset="t", scale=(0.0, 1.0))


@pytest.fixture()
def good_rows(tmp_path):
    rows = []
    for i in range(6):
        p = write_image(tmp_path / "img" / f"good ({i}).jpg", seed=i)
        rows.append((p.name, str(p), 0.1 + 0.15 * i, ["train", "val", "test"][i % 3]))
    v = write_mp4(tmp_path / "vid" / "clip.mp4")
    rows.append(("clip.mp4", str(v), 0.5, "train"))
    return rows


def test_clean_manifest_passes(tmp_path, good_rows):
    outcome = validate_manifest(_manifest(tmp_path, good_rows), workers=1, render_html=False)
    assert len(outcome.quarantine) == 0
    assert len(outcome.valid) == len(good_rows)
    assert outcome.report["gx_success"] is True


def test_each_bad_row_is_quarantined_with_reason(tmp_path, good_rows):
    corrupt = write_image(tmp_path / "bad" / "corrupt.jpg", seed=10)
    data = bytearray(corrupt.read_bytes())
    data[200:600] = bytes(400)  # zero out entropy-coded data after the headers... and the SOS marker
    data[2:4] = b"\x00\x00"  # break the first marker segment: no decoder accepts this
    corrupt.write_bytes(bytes(data))
    trunc_jpg = truncate(write_image(tmp_path / "bad" / "trunc.jpg", seed=11, size=(256, 256)), 0.4)
    trunc_mp4 = truncate(write_mp4(tmp_path / "bad" / "trunc.mp4", n_frames=8), 0.02)
    bad = [
        ("corrupt.jpg", str(corrupt), 0.5, "train"),
        ("trunc.jpg", str(trunc_jpg), 0.5, "train"),
        ("trunc.mp4", str(trunc_mp4), 0.5, "train"),
        ("missing.jpg", str(tmp_path / "nope" / "missing.jpg"), 0.5, "train"),
        ("nan.jpg", str(write_image(tmp_path / "bad" / "nan.jpg", seed=12)), float("nan"), "train"),
        ("range.jpg", str(write_image(tmp_path / "bad" / "range.jpg", seed=13)), 1.7, "test"),
        good_rows[3],  # duplicated row
    ]
    df = _manifest(tmp_path, good_rows + bad)
    outcome = validate_manifest(df, workers=1, render_html=False)
    q = outcome.quarantine.set_index("item_id")["reason"].to_dict()
    assert "cannot decode image" in q["t/corrupt.jpg"]
    assert "cannot decode image" in q["t/trunc.jpg"]
    assert "video" in q["t/trunc.mp4"] or "frame" in q["t/trunc.mp4"]
    assert "file not found" in q["t/missing.jpg"]
    assert "mos is missing" in q["t/nan.jpg"]
    assert "outside its source scale" in q["t/range.jpg"]
    assert "mos_norm" in q["t/range.jpg"]
    dup_id = f"t/{good_rows[3][0]}"
    # the first occurrence stays valid, the repeat is quarantined
    assert dup_id in set(outcome.valid["item_id"])
    assert "duplicated row" in q[dup_id]
    assert len(outcome.quarantine) == len(bad)
    assert len(outcome.valid) == len(good_rows)
    assert outcome.report["gx_success"] is False


def test_identical_content_across_splits_is_quarantined(tmp_path):
    a = write_image(tmp_path / "a.png", seed=3)
    b = tmp_path / "b.bmp"  # same pixels, other container: still the same content
    from PIL import Image

    Image.open(a).save(b)
    c = write_image(tmp_path / "c.png", seed=4)
    df = _manifest(
        tmp_path, [("a", str(a), 0.2, "train"), ("b", str(b), 0.3, "test"), ("c", str(c), 0.4, "test")]
    )
    outcome = validate_manifest(df, workers=1, render_html=False)
    assert set(outcome.quarantine["item_id"]) == {"t/a", "t/b"}
    assert all("more than one split" in r for r in outcome.quarantine["reason"])


def test_html_report_is_the_same_on_every_run(tmp_path, good_rows):
    """The GX page is a DVC output: two runs on one manifest must write the same bytes (#20)."""
    rows = good_rows + [("missing.jpg", str(tmp_path / "missing.jpg"), 0.5, "train")]
    df = _manifest(tmp_path, rows)
    first = validate_manifest(df, workers=1).html
    second = validate_manifest(df, workers=1).html
    assert "missing.jpg" in first and "collapse" in first  # a real page, with its collapsible blocks
    assert first == second


def test_gate_fails_and_still_writes_everything(tmp_path, good_rows):
    rows = good_rows + [("missing.jpg", str(tmp_path / "missing.jpg"), 0.5, "train")]
    manifest = write_manifest(_manifest(tmp_path, rows), tmp_path / "m.parquet")
    with pytest.raises(GateFailed, match="1 quarantined"):
        run_validation(
            manifest,
            out=tmp_path / "valid.parquet",
            quarantine=tmp_path / "q.csv",
            report=tmp_path / "r.json",
            html=tmp_path / "r.html",
            workers=1,
        )
    q = pd.read_csv(tmp_path / "q.csv")
    assert list(q["item_id"]) == ["t/missing.jpg"]
    assert len(read_manifest(tmp_path / "valid.parquet")) == len(good_rows)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["gate_passed"] is False and report["n_quarantined"] == 1
    assert "<html" in (tmp_path / "r.html").read_text().lower()
    # a tolerant threshold lets the same manifest through
    outcome = run_validation(
        manifest,
        out=None,
        quarantine=tmp_path / "q2.csv",
        report=tmp_path / "r2.json",
        max_fail_share=0.5,
        workers=1,
    )
    assert outcome.report["gate_passed"] is True


def test_no_media_check_still_rejects_missing_and_non_media_files(tmp_path, good_rows, capsys):
    """`--no-media-check` skips the decode, not the existence and header checks (#20)."""
    (tmp_path / "bad").mkdir()
    text_jpg = tmp_path / "bad" / "notes.jpg"
    text_jpg.write_text("this is a text file, not a JPEG\n")
    text_mp4 = tmp_path / "bad" / "notes.mp4"
    text_mp4.write_text("not a video either\n")
    empty = tmp_path / "bad" / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "bad" / "folder.jpg"
    folder.mkdir()
    bad = [
        ("missing.jpg", str(tmp_path / "nope" / "missing.jpg"), 0.5, "train"),
        ("notes.jpg", str(text_jpg), 0.5, "train"),
        ("notes.mp4", str(text_mp4), 0.5, "val"),
        ("empty.png", str(empty), 0.5, "test"),
        ("folder.jpg", str(folder), 0.5, "train"),
    ]
    df = _manifest(tmp_path, good_rows + bad)
    outcome = validate_manifest(df, check_media=False, workers=1, render_html=False)
    q = outcome.quarantine.set_index("item_id")["reason"].to_dict()
    assert sorted(q) == sorted(f"t/{name}" for name, *_ in bad)
    assert "file not found" in q["t/missing.jpg"]
    assert "not a readable image" in q["t/notes.jpg"]
    assert "cannot open video" in q["t/notes.mp4"]
    assert "empty file" in q["t/empty.png"]
    assert "not a regular file" in q["t/folder.jpg"]
    assert len(outcome.valid) == len(good_rows)
    assert outcome.report["media_checked"] is False
    # the CLI flag takes the same path
    path = write_manifest(df, tmp_path / "m.parquet")
    args = [
        "validate",
        str(path),
        "--no-media-check",
        "--quarantine",
        str(tmp_path / "q.csv"),
        "--workers",
        "1",
    ]
    assert cli_main(args) == 1
    quarantined = pd.read_csv(tmp_path / "q.csv")
    assert sorted(quarantined["item_id"]) == sorted(q)


def test_unparseable_mos_keeps_the_label_files_text(tmp_path, good_rows):
    """A MOS like "abc" is quarantined with its own text, not as "missing" (#20)."""
    img = write_image(tmp_path / "bad" / "abc.jpg", seed=20)
    blank = write_image(tmp_path / "bad" / "blank.jpg", seed=21)
    rows = [(n, p, str(m), sp) for n, p, m, sp in good_rows]
    rows += [("abc.jpg", str(img), "abc", "train"), ("blank.jpg", str(blank), "", "train")]
    df = _manifest(tmp_path, rows)
    assert df["mos"].isna().sum() == 2
    outcome = validate_manifest(df, workers=1, render_html=False)
    q = outcome.quarantine.set_index("item_id")
    assert "'abc' is not a number" in q.loc["t/abc.jpg", "reason"]
    assert q.loc["t/abc.jpg", "mos_raw"] == "abc"
    assert "mos is missing" in q.loc["t/blank.jpg", "reason"]  # empty text is missing, not unparsed
    assert len(outcome.valid) == len(good_rows)
    # a manifest whose MOS all parse gets no extra column
    assert "mos_raw" not in _manifest(tmp_path, good_rows).columns


def test_cli_exit_codes(tmp_path, good_rows, capsys):
    ok = write_manifest(_manifest(tmp_path, good_rows), tmp_path / "ok.parquet")
    assert cli_main(["validate", str(ok), "--quarantine", str(tmp_path / "q.csv"), "--workers", "1"]) == 0
    bad_rows = good_rows + [("x.jpg", str(tmp_path / "x.jpg"), np.nan, "train")]
    bad = write_manifest(_manifest(tmp_path, bad_rows), tmp_path / "bad.parquet")
    assert cli_main(["validate", str(bad), "--quarantine", str(tmp_path / "q.csv"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "t/x.jpg" in err


def test_missing_columns_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="lacks required columns"):
        validate_manifest(pd.DataFrame({"path": ["a"]}))
