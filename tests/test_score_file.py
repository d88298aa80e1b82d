"""`qualitune score DIR --out FILE`: rows written as they are scored, and a re-run resumes the file."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from media_factory import write_image
from qualitune import cli
from qualitune.score_file import ScoreFile
from qualitune.scorer import Scorer
from vlm_factory import tiny_scorer_dir


def _row(path: str, score: float | None = 30.0) -> dict:
    r = {"path": path, "score": score, "score_1_5": None if score is None else 3.0, "levels": [0.2] * 5}
    if score is None:
        r["error"] = "cannot decode"
    return r


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_rows_survive_reopen_and_error_rows_are_retried(tmp_path: Path, ext: str) -> None:
    out = tmp_path / f"scores{ext}"
    f = ScoreFile(out, model="m", mode="expected")
    f.append([_row("a.png"), _row("b.png", None)])
    f.append([_row("c.png", 41.5)])
    again = ScoreFile(out, model="m", mode="expected")
    assert again.done == {os.path.abspath("a.png"), os.path.abspath("c.png")}
    assert again.retried == 1
    # the failed row is gone from the file itself, so retrying it leaves one row per file
    again.append([_row("b.png", 12.0)])
    rows = ScoreFile(out, model="m", mode="expected").rows
    assert [(r["path"], r["score"]) for r in rows] == [("a.png", 30.0), ("c.png", 41.5), ("b.png", 12.0)]
    assert rows[0]["levels"] == [0.2] * 5 and rows[0]["mode"] == "expected" and rows[0]["model"] == "m"


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_half_written_last_line_is_dropped_but_a_bad_middle_line_is_an_error(
    tmp_path: Path, ext: str
) -> None:
    out = tmp_path / f"scores{ext}"
    ScoreFile(out, model="m", mode="expected").append([_row("a.png"), _row("b.png")])
    text = out.read_text()
    out.write_text(text[:-7])  # the interrupt cut the last row short
    f = ScoreFile(out, model="m", mode="expected")
    assert f.dropped_partial and [r["path"] for r in f.rows] == ["a.png"]
    assert out.read_text().endswith("\n")  # rewritten whole: the next append starts a new line
    lines = text.splitlines(keepends=True)
    bad = (
        lines[0] + "{not json\n" + "".join(lines[1:])
        if ext == ".jsonl"
        else lines[0] + "x\n" + "".join(lines[1:])
    )
    out.write_text(bad)
    with pytest.raises(ValueError, match="line 2"):
        ScoreFile(out, model="m", mode="expected")
    assert out.read_text() == bad  # nothing rewritten: the user's file is left for them to fix


def test_other_model_or_mode_or_format_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    ScoreFile(out, model="m", mode="expected").append([_row("a.png")])
    with pytest.raises(ValueError, match="same --model and --mode"):
        ScoreFile(out, model="other", mode="expected")
    with pytest.raises(ValueError, match="same --model and --mode"):
        ScoreFile(out, model="m", mode="greedy")
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        ScoreFile(tmp_path / "scores.txt", model="m", mode="expected")


def test_score_out_resumes_after_an_interrupt(tmp_path: Path, monkeypatch, capsys) -> None:
    """A real tiny scorer: the first run dies in its second chunk; the re-run scores only the rest,
    and the file ends as an uninterrupted run's would, one row per file."""
    model = tiny_scorer_dir(tmp_path / "scorer")
    media = tmp_path / "media"
    for i in range(5):
        write_image(media / f"p{i}.png", seed=i)
    (media / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    args = ["score", "--model", str(model), "--batch-size", "2", "--chunk", "2", str(media)]

    calls: list[list[str]] = []
    real = Scorer.score_paths

    def dying(self, paths, **kw):
        calls.append(list(paths))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, paths, **kw)

    monkeypatch.setattr(Scorer, "score_paths", dying)
    with pytest.raises(KeyboardInterrupt):
        cli.main([*args, "--out", str(tmp_path / "scores.csv")])
    with open(tmp_path / "scores.csv") as fh:
        first = list(csv.DictReader(fh))
    assert len(first) == 2  # the first chunk landed before the interrupt

    calls.clear()
    monkeypatch.setattr(Scorer, "score_paths", real)
    rc = cli.main([*args, "--out", str(tmp_path / "scores.csv")])
    assert rc == 1  # zz_broken.jpg failed, and says so
    err = capsys.readouterr().err
    assert "2 already scored there and skipped" in err and "1 failed" in err
    with open(tmp_path / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted(Path(r["path"]).name for r in rows)
    assert names == sorted(["zz_broken.jpg", *(f"p{i}.png" for i in range(5))])  # one row per file
    assert rows[:2] == first  # rows written before the interrupt are untouched

    # a third run retries only the failed file (and it fails again, with its reason)
    monkeypatch.setattr(Scorer, "score_paths", dying)
    assert cli.main([*args, "--out", str(tmp_path / "scores.csv")]) == 1
    assert calls == [[str(media / "zz_broken.jpg")]]
    assert "5 already scored there and skipped, 1 failed before and retried" in capsys.readouterr().err
    monkeypatch.setattr(Scorer, "score_paths", real)

    rc = cli.main([*args, "--out", str(tmp_path / "full.jsonl")])
    full = {
        Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "full.jsonl").read_text().splitlines())
    }
    for r in rows:
        name = Path(r["path"]).name
        if name == "zz_broken.jpg":
            assert r["score"] == "" and r["error"] and full[name].get("score") is None
        else:  # the resumed file holds the scores an uninterrupted run gives
            assert float(r["score"]) == pytest.approx(full[name]["score"], abs=1e-6)
            assert json.loads(r["levels"]) == pytest.approx(full[name]["levels"], abs=1e-6)
