"""The registry gate against a real MLflow (sqlite in a temp dir) with real tiny scorers.

A "good" scorer is trained (the recipe of test_training's `test_the_pixels_reach_the_answer`) to tell
flat images (MOS 5) from noisy ones (MOS 1); the "bad" one is the untrained tiny model. On held-out
flat/noisy images their finals are about +0.9 and -0.6, so every gate decision is decided by a
wide gap. One sqlite database serves the module (each new one costs ~2 s
of schema migration); two registered model names keep the two scenarios apart.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from qualitune.codec import decode_base64, decode_media, sniff_video_suffix
from qualitune.gate import RegisterSettings, decide
from qualitune.media import MediaError
from qualitune.store import parse_model_uri, resolve_tracking_uri
from qualitune.tracking import tracking_settings
from vlm_factory import flat_or_noisy_scorer, tiny_scorer_dir, write_flat_or_noisy

ROOT = Path(__file__).resolve().parents[1]


def _mlflow_state() -> tuple[str | None, str | None, str | None]:
    if "mlflow" not in sys.modules:
        return None, None, None
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return (
        tracking_utils._tracking_uri,
        registry_utils._registry_uri,
        os.environ.get("MLFLOW_TRACKING_URI"),
    )


@pytest.fixture(autouse=True)
def restore_mlflow_uris():
    """Whatever a test does, the global tracking/registry URIs and MLFLOW_TRACKING_URI come back."""
    before = _mlflow_state()
    env_before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = before[0]
        registry_utils._registry_uri = before[1]
    for k, v in env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---------------------------------------------------------------------------------------------------------
# The decision rule and settings (no MLflow, no model)


NAN = math.nan


@pytest.mark.parametrize(
    ("challenger", "champion", "min_final", "margin", "promoted", "words"),
    [
        pytest.param(0.5, None, 0.0, 0.0, True, ["no champion", "0.5000", ">= minimum 0.0000"], id="first"),
        pytest.param(0.8, 0.7, 0.0, 0.05, True, ["0.8000 >= champion final 0.7000", "0.7500"], id="promote"),
        pytest.param(0.7, 0.7, 0.0, 0.0, True, [">= champion final 0.7000"], id="tie-promotes"),
        pytest.param(0.3, None, 0.5, 0.0, False, ["0.3000 is below the minimum 0.5000"], id="threshold"),
        pytest.param(0.3, 0.1, 0.5, 0.0, False, ["below the minimum"], id="threshold-beats-champion"),
        pytest.param(0.72, 0.7, 0.0, 0.05, False, ["0.7200 < champion final 0.7000", "0.7500"], id="margin"),
        pytest.param(NAN, None, -1.0, 0.0, False, ["no valid final"], id="nan-first"),
        pytest.param(NAN, -0.5, -1.0, 0.0, False, ["no valid final"], id="nan-vs-champion"),
        pytest.param(None, None, -1.0, 0.0, False, ["no valid final"], id="none"),
        pytest.param(0.1, NAN, 0.0, 0.0, True, ["champion has no valid final"], id="nan-champion"),
    ],
)
def test_decide(challenger, champion, min_final, margin, promoted, words):
    ok, reason = decide(challenger, champion, min_final, margin)
    assert ok is promoted
    for w in words:
        assert w in reason, reason


def test_settings_from_params_defaults_and_errors():
    s = RegisterSettings.from_params({})
    assert (s.model_name, s.min_final, s.margin, s.mode, s.batch_size, s.report) == (
        "qualitune",
        0.0,
        0.0,
        "expected",
        8,
        "reports/register.json",
    )
    s = RegisterSettings.from_params(
        {"register": {"min_final": 1, "margin": 0.02, "mode": "greedy"}, "mlflow": {"model_name": "iqa"}}
    )
    assert (s.model_name, s.min_final, s.margin, s.mode) == ("iqa", 1.0, 0.02, "greedy")
    for bad, words in [
        ({"register": {"min_fnal": 0.1}}, "unknown key"),
        ({"register": {"min_final": float("nan")}}, "finite"),
        ({"register": {"margin": -0.1}}, "margin must be >= 0"),
        ({"register": {"mode": "sampled"}}, "mode must be one of"),
        ({"register": {"batch_size": 0}}, "batch_size"),
        ({"mlflow": {"model_name": "a/b"}}, "may not contain"),
    ]:
        with pytest.raises(ValueError, match=words):
            RegisterSettings.from_params(bad)
    # the registry-only key does not upset the tracking settings
    t = tracking_settings({"mlflow": {"tracking_uri": "sqlite:///x.db", "model_name": "iqa"}})
    assert t.tracking_uri.endswith("/x.db") and t.tracking_uri.startswith("sqlite:////")


def test_parse_model_uri_and_tracking_uri_resolution(tmp_path, monkeypatch):
    assert parse_model_uri("models:/qualitune@champion") == ("qualitune", "champion", None)
    assert parse_model_uri("models:/qualitune/3") == ("qualitune", None, "3")
    for bad in ("models:/", "models:/a/b/c", "runs:/x/model", "models:/a@"):
        with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
            parse_model_uri(bad)

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="set MLFLOW_TRACKING_URI"):
        resolve_tracking_uri()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"mlflow": {"tracking_uri": "sqlite:///reg.db"}}))
    with pytest.raises(ValueError, match="no MLflow database"):
        resolve_tracking_uri()
    (tmp_path / "reg.db").write_bytes(b"")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'reg.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri() == "http://tracking.example:5000"


# ---------------------------------------------------------------------------------------------------------
# Bytes -> media (shared by the pyfunc and serving)


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_base64_variants():
    raw = _png_bytes(np.zeros((4, 4, 3), np.uint8))
    b64 = base64.b64encode(raw).decode()
    assert decode_base64(b64) == raw
    assert decode_base64(f"data:image/png;base64,{b64}") == raw
    assert decode_base64("\n".join(b64[i : i + 20] for i in range(0, len(b64), 20))) == raw
    assert decode_base64(b64.rstrip("=")) == raw  # missing padding
    assert decode_base64(base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 8).decode()) == b"\xfb\xff\xfe" * 8
    assert decode_base64(raw) == raw  # raw bytes pass through
    for bad, words in [
        ("not base64!!", "not valid base64"),
        ("", "empty"),
        (None, "no image"),
        (float("nan"), "no image"),
        (12, "expected a base64"),
        ("data:image/png,abc", "not base64-encoded"),
    ]:
        with pytest.raises(MediaError, match=words):
            decode_base64(bad)


def test_sniff_and_decode_media(tmp_path):
    from media_factory import truncate, write_mp4

    assert sniff_video_suffix(b"\x00\x00\x00\x18ftypisom\x00\x00") == ".mp4"
    assert sniff_video_suffix(b"\x00\x00\x00\x14ftypqt  \x00\x00") == ".mov"
    assert sniff_video_suffix(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm") == ".webm"
    assert sniff_video_suffix(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska") == ".mkv"
    assert sniff_video_suffix(b"RIFF\x00\x10\x00\x00AVI LIST") == ".avi"
    assert sniff_video_suffix(b"RIFF\x00\x10\x00\x00WEBPVP8 ") is None  # an image
    assert sniff_video_suffix(_png_bytes(np.zeros((2, 2, 3), np.uint8))) is None

    kind, img = decode_media(_png_bytes(np.full((10, 12, 3), 7, np.uint8)))
    assert kind == "image" and img.size == (12, 10) and img.mode == "RGB"
    la = io.BytesIO()
    from PIL import Image

    Image.new("LA", (3, 3), (0, 0)).save(la, format="PNG")  # transparent: composited on white
    assert decode_media(la.getvalue())[1].getpixel((0, 0)) == (255, 255, 255)

    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("qualitune-*"))
    clip = write_mp4(tmp_path / "c.mp4", n_frames=6)
    kind, frames = decode_media(clip.read_bytes(), n_frames=3)
    assert kind == "video" and len(frames) == 3 and frames[0].size == (64, 48)
    assert set(Path(tempfile.gettempdir()).glob("qualitune-*")) <= before  # the temporary file is gone

    with pytest.raises(MediaError, match="cannot decode"):
        decode_media(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(MediaError, match="cannot decode"):
        decode_media(_png_bytes(np.zeros((32, 32, 3), np.uint8))[:60])  # truncated image
    broken = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 40
    with pytest.raises(MediaError) as err:
        decode_media(broken)
    assert "qualitune-" not in str(err.value)  # the temporary file's path never leaks
    truncate(clip, keep=0.05)
    with pytest.raises(MediaError):
        decode_media(clip.read_bytes())


# ---------------------------------------------------------------------------------------------------------
# Real scorers in a real registry


MANIFEST_COLUMNS = {"mos_std": 0.5, "dataset": "test", "scale_min": 1.0, "scale_max": 5.0}


def _media(folder: Path) -> tuple[list[dict], list[dict]]:
    """Train and val rows of flat (MOS 5) and noisy (MOS 1) PNGs, drawn as in test_training's
    `test_the_pixels_reach_the_answer`, whose recipe is known to separate them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def row(kind: str, i: int, split: str) -> dict:
        path = write_flat_or_noisy(folder / f"{kind}{i}.png", kind, rng)
        mos = 5.0 if kind == "flat" else 1.0
        return {"item_id": f"{kind}{i}", "path": path, "media": "image", "mos_norm": mos, "split": split}

    train = [row(k, i, "train") for i in range(8) for k in ("flat", "noisy")]
    val = [row("flat", 100 + i, "val") for i in range(4)] + [row("noisy", 100 + i, "val") for i in range(4)]
    return train, val


def _bad_scorer(out: Path) -> Path:
    """The untrained tiny model (seed 1): a scorer folder with only its spec. Its expected-mode scores
    barely vary and, on these images, run slightly against the MOS (final about -0.6)."""
    return tiny_scorer_dir(out)


def _git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    cmd += ["-c", "commit.gpgsign=false", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


DVC_LOCK = """schema: '2.0'
stages:
  pmod:
    cmd: python -m qualitune.stages.pmod
    outs:
    - path: data/pmod.parquet
      hash: md5
      md5: 0123456789abcdef0123456789abcdef
      size: 10
  train:
    cmd: python -m qualitune.stages.train
    outs:
    - path: models/scorer
      hash: md5
      md5: fedcba9876543210fedcba9876543210.dir
      size: 20
      nfiles: 2
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two trained scorers, a held-out val split and a project (git repo, dvc.lock, params.yaml)."""
    root = tmp_path_factory.mktemp("registry")
    train_rows, val_rows = _media(root / "media")
    good = flat_or_noisy_scorer(train_rows, root / "good")
    bad = _bad_scorer(root / "bad")

    project = root / "project"
    project.mkdir()
    from qualitune.manifest import write_manifest

    manifest = pd.DataFrame(train_rows + val_rows).assign(mos=lambda d: d["mos_norm"], **MANIFEST_COLUMNS)
    write_manifest(manifest, project / "data" / "pmod.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(out=str(good), data="data/pmod.parquet")
    params["mlflow"] = {
        "tracking_uri": "sqlite:///mlflow.db",
        "experiment": "qualitune",
        "enabled": True,
        "artifact_location": str(root / "artifacts"),
    }
    params["register"] = {"min_final": 0.0, "margin": 0.0, "mode": "expected", "batch_size": 4}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "dvc.lock").write_text(DVC_LOCK)
    _git(project, "init", "-q")
    _git(project, "add", "params.yaml", "dvc.lock")
    _git(project, "commit", "-q", "-m", "init")
    return {
        "root": root,
        "project": project,
        "good": good,
        "bad": bad,
        "val": pd.DataFrame(val_rows),
        "uri": f"sqlite:///{project / 'mlflow.db'}",
        "cache": root / "cache",
        "params": params,
    }


@pytest.fixture(scope="module")
def flows(world):
    """Model `qualitune`: the good scorer through the DVC stage (first ever), then the bad one through
    `qualitune register --scorer`. Model `second`: the bad scorer first (min_final -1), then the good."""
    from qualitune.commands import register as register_cmd
    from qualitune.gate import log_and_register
    from qualitune.stages import register as register_stage

    project = world["project"]
    out: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("QUALITUNE_MODEL_CACHE", str(world["cache"]))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert register_stage.main(["--params", "params.yaml"]) == 0
        out["first_report"] = json.loads((project / "reports/register.json").read_text())
        out["aliases_after_first"] = _aliases(_client(world["uri"]), "qualitune")

        import argparse

        parser = argparse.ArgumentParser()
        register_cmd.register(parser.add_subparsers())
        args = parser.parse_args(["register", "--params", "params.yaml", "--scorer", str(world["bad"])])
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert args.func(args) == 0
        out["second_printed"] = json.loads(buf.getvalue())
        out["second_report"] = json.loads((project / "reports/register.json").read_text())

        tracking = tracking_settings(world["params"])
        base = dict(model_name="second", report=str(world["root"] / "second.json"), batch_size=4)
        out["bad_first"] = log_and_register(
            world["bad"], RegisterSettings(min_final=-1.0, **base), tracking, val_df=world["val"]
        )
        out["good_after_bad"] = log_and_register(
            world["good"], RegisterSettings(**base), tracking, val_df=world["val"], params={"note": "x"}
        )
    return out


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.fixture
def client(world):
    return _client(world["uri"])


def _aliases(client, name: str) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}


def test_first_model_becomes_champion_with_metrics_provenance_and_lineage(world, flows, client):
    d = flows["first_report"]
    assert d["promoted"] is True and d["champion_version"] is None and d["champion_after"] == "1"
    assert d["challenger_final"] > 0.5, d  # the good scorer separates flat from noisy
    assert "no champion yet" in d["reason"] and f"{d['challenger_final']:.4f}" in d["reason"]
    assert flows["aliases_after_first"] == {"champion": "1", "challenger": "1"}

    mv = client.get_model_version("qualitune", "1")
    tags = mv.tags
    assert float(tags["val.final"]) == pytest.approx(d["challenger_final"])
    assert float(tags["val.srcc"]) == pytest.approx(d["challenger_metrics"]["srcc"])
    assert float(tags["val.plcc"]) == pytest.approx(d["challenger_metrics"]["plcc"])
    assert tags["val.mode"] == "expected"
    project = world["project"]
    assert tags["git_commit"] == _git(project, "rev-parse", "HEAD")
    assert tags["git_dirty"] in ("true", "false")
    assert tags["dvc_lock_md5"] == hashlib.md5((project / "dvc.lock").read_bytes()).hexdigest()
    assert tags["lineage.train/models/scorer"] == "fedcba9876543210fedcba9876543210.dir"
    assert tags["lineage.pmod/data/pmod.parquet"] == "0123456789abcdef0123456789abcdef"
    assert tags["params.train.data"] == "data/pmod.parquet" and tags["params.register.min_final"] == "0.0"
    assert tags["gate.decision"] == "promoted"

    run = client.get_run(mv.run_id)
    assert run.info.run_name == "register" and run.info.status == "FINISHED"
    assert run.data.params["register.batch_size"] == "4"
    assert run.data.metrics["challenger.final"] == pytest.approx(d["challenger_final"])
    assert run.data.tags["registered_version"] == "1" and run.data.tags["promoted"] == "true"


def test_bad_challenger_is_rejected_and_the_champion_stays(flows, client):
    d = flows["second_report"]
    assert flows["second_printed"] == d
    assert d["promoted"] is False
    assert (d["challenger_version"], d["champion_version"], d["champion_after"]) == ("2", "1", "1")
    assert d["challenger_final"] < 0.5 < d["champion_final"]
    # the champion was scored again now, on the same rows: its final is the one it registered with
    assert d["champion_final"] == pytest.approx(flows["first_report"]["challenger_final"], abs=1e-6)
    for number in (d["challenger_final"], d["champion_final"]):
        assert f"{number:.4f}" in d["reason"], d["reason"]
    assert "challenger v2 vs champion v1" in d["reason"] and "not promoted, champion v1" in d["reason"]
    assert _aliases(client, "qualitune") == {"champion": "1", "challenger": "2"}
    assert client.get_model_version("qualitune", "2").tags["gate.decision"] == "rejected"


def test_good_challenger_replaces_a_bad_champion(world, flows, client):
    first, second = flows["bad_first"], flows["good_after_bad"]
    assert first.promoted and first.champion_version is None  # min_final -1 let the bad one in
    assert math.isfinite(first.challenger_final) and first.challenger_final < 0.5
    assert second.promoted and second.champion_version == "1" and second.champion_after == "2"
    assert second.challenger_final > 0.5 > second.champion_final
    assert _aliases(client, "second") == {"champion": "2", "challenger": "2"}
    saved = json.loads((world["root"] / "second.json").read_text())
    assert saved["promoted"] is True and saved["reason"] == second.reason
    assert client.get_model_version("second", "2").tags["params.note"] == "x"


def test_download_scorer_caches_versions_and_explains_bad_references(world, flows, monkeypatch):
    import mlflow

    from qualitune.store import download_scorer

    monkeypatch.setenv("QUALITUNE_MODEL_CACHE", str(world["cache"]))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    champion = download_scorer("models:/qualitune@champion")
    assert (champion / "qualitune_scorer.json").is_file()
    assert download_scorer("models:/qualitune/1") == champion
    assert download_scorer("models:/second@champion") != champion

    def no_download(*a, **k):
        raise AssertionError("a cached version was downloaded again")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    assert download_scorer("models:/qualitune@champion") == champion

    with pytest.raises(ValueError, match=r"no registered model 'nope'.*'qualitune'"):
        download_scorer("models:/nope@champion")
    with pytest.raises(ValueError, match=r"has no alias 'prod'.*champion"):
        download_scorer("models:/qualitune@prod")
    with pytest.raises(ValueError, match=r"has no version 99; versions: \[1, 2\]"):
        download_scorer("models:/qualitune/99")


def test_download_scorer_reads_the_registry_it_is_given_from_any_folder(world, flows, tmp_path, monkeypatch):
    """Found by the SIGKILL test of `register` (#20): with an explicit `tracking_uri`, the download
    still resolved the version's source through MLflow's global URI, i.e. ./mlflow.db of the working
    folder, which it created empty and then failed on ("Registered Model ... not found")."""
    from qualitune.store import download_scorer

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("QUALITUNE_MODEL_CACHE", str(tmp_path / "cache"))  # nothing cached: a real download
    local = download_scorer("models:/qualitune@champion", tracking_uri=world["uri"])
    assert (local / "qualitune_scorer.json").is_file()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def good_scorer(world):
    from qualitune.scorer import Scorer

    return Scorer.load(world["good"])


def test_score_cli_reads_the_champion_from_the_registry(world, flows, good_scorer, tmp_path):
    img = world["val"]["path"].iloc[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": world["uri"], "QUALITUNE_MODEL_CACHE": str(tmp_path / "c")}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "qualitune.cli",
            "score",
            "--model",
            "models:/qualitune@champion",
            "--json",
            img,
        ],
        cwd=tmp_path,  # no params.yaml here: the environment variable finds the registry
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    (row,) = [json.loads(line) for line in res.stdout.splitlines()]
    local = good_scorer.score_paths([img]).results[0]
    assert row["score"] == pytest.approx(local["score"], abs=1e-5)
    assert row["levels"] == pytest.approx(local["levels"], abs=1e-6)


def test_pyfunc_from_the_registry_scores_base64_and_reports_bad_rows(world, flows, good_scorer, monkeypatch):
    import mlflow

    from media_factory import write_mp4

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world["uri"])
    model = mlflow.pyfunc.load_model("models:/qualitune@champion")
    img = world["val"]["path"].iloc[1]
    clip = write_mp4(world["root"] / "clip.mp4", n_frames=4)
    b64 = [base64.b64encode(Path(p).read_bytes()).decode() for p in (img, clip)]
    out = model.predict(pd.DataFrame({"image": [b64[0], "not base64!!", b64[1]]}))
    assert len(out) == 3
    local = good_scorer.score_paths([img]).results[0]
    assert out[0]["score"] == pytest.approx(local["score"], abs=1e-5) and out[0]["error"] is None
    assert out[0]["media"] == "image" and len(out[0]["levels"]) == 5 and out[0]["mode"] == "expected"
    assert out[1]["score"] is None and "base64" in out[1]["error"]
    assert out[2]["media"] == "video" and 10 <= out[2]["score"] <= 50
    greedy = model.predict(pd.DataFrame({"image": b64[:1]}), params={"mode": "greedy"})
    assert greedy[0]["mode"] == "greedy" and greedy[0]["answer"] is not None
