"""benchmarks/reliability.py on a small seeded sample of every category, and at full size (slow).

The fast tests run the benchmark's own functions on real generated files: one mutant of each kind
plus one seeded truncation and one seeded byte-flip per seed file, through the real gate, the real
`qualitune annotate` and `qualitune score` commands (subprocesses), a real `qualitune serve` on
loopback with the untrained tiny scorer; and a seeded sample of the malformed label files through
the real adapters. Each asserts nothing crashed, hung or was lost, that every input whose outcome
is known got it, and a few outcomes by name (the reason a file was refused).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
R = importlib.util.module_from_spec(_spec)
sys.modules["reliability"] = R
_spec.loader.exec_module(R)


def _clean(tally) -> dict:
    d = tally.as_dict()
    assert d["crashed"] == d["hung"] == d["lost"] == 0, d
    assert d["unexpected"] == 0, d["examples"]
    assert d["cases"] == d["scored"] + d["reported"]
    return d


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability") / "dataset"
    muts = R.make_media_mutants(root, n_random=1, seed=0)
    R.write_media_labels(root, muts)
    return root, muts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return R.tiny_model(tmp_path_factory.mktemp("scorer") / "scorer")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("server")
    monkeypatch_module.setenv("PYTHONPATH", str(ROOT / "src"))
    extra = ["--params", str(R.serve_params(tmp, 1.0)), "--device", "cpu"]
    proc, port = R.start_server(str(model), tmp / "serve.log", R.STARTUP_S, extra=extra)
    yield proc, port
    R.stop_server(proc)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_mutants_cover_every_kind_the_issue_lists(media):
    _, muts = media
    families = {m.family for m in muts}
    assert {
        "truncated",
        "flipped-bytes",
        "wrong-extension",
        "zero-byte",
        "huge-dimensions",
        "animated",
        "mode",
        "broken-index",
        "no-video-stream",
        "symlink-outside",
        "dotdot",
        "name",
    } <= families
    assert len({m.name for m in muts}) == len(muts)


def test_media_through_ingest_and_the_gate(media):
    root, muts = media
    tally = R.fuzz_validate(root, muts)
    d = _clean(tally)
    assert d["manifest_rows"] == d["label_rows"] == len(muts) and d["outside_reads"] == 0
    out = tally.outcomes
    assert out["zero.jpg"] == ("reported", out["zero.jpg"][1]) and "empty file" in out["zero.jpg"][1]
    assert "outside the folder being read" in out["link_outside.png"][1]
    assert "outside the folder being read" in out["../../outside/secret.png"][1]
    assert "exceeds limit" in out["huge_100000.png"][1] and "no video stream" in out["audio_only.mkv"][1]
    assert "not a regular file" in out["pipe.jpg"][1]
    for name in ("mode_I16.png", "mode_cmyk.jpg", "animated.gif", "café 写真 ñ.jpg", "a..b.jpg"):
        assert out[name][0] == "scored", name


def test_media_through_annotate_and_score(media, model):
    root, muts = media
    annotated = R.fuzz_annotate(root, muts)
    scored = R.fuzz_score(root, muts, model)
    for tally in (annotated, scored):
        d = _clean(tally)
        assert d["cases"] == sum(m.listed for m in muts) and d["extra_rows"] == 0 and d["outside_reads"] == 0
        assert d["rc"] == 1  # some files failed: the status says so
        assert 0 < d["peak_rss_mb"] <= d["rss_bound_mb"] and not d["over_memory_bound"]
        assert "outside the folder being read" in tally.outcomes["link_outside.mp4"][1]
    assert annotated.outcomes.keys() == scored.outcomes.keys()
    assert {k for k, v in annotated.outcomes.items() if v[0] == "scored"} == {
        k for k, v in scored.outcomes.items() if v[0] == "scored"
    }


def test_media_through_the_server_then_a_soak(media, server):
    root, muts = media
    proc, port = server
    tally = R.fuzz_serve(root, muts, port)
    _clean(tally)
    assert tally.outcomes["zero.png"][0] == "reported" and tally.outcomes["mode_rgba.webp"][0] == "scored"
    s = R.soak(port, proc.pid, n_requests=60, concurrency=5, max_request_mb=1.0, seed=0)
    assert s["requests"] == 60 and s["admitted_valid"] > 0 and s["admitted_errors"] == 0
    assert s["shed_503"] > 0 and s["shed_without_retry_after"] == 0  # 5 clients, max_pending 2
    assert s["invalid_misanswered"] == s["oversized_misanswered"] == 0
    assert s["rss_growth_mb"] < s["rss_bound_mb"]
    assert 0 < s["p50_ms"] <= s["p95_ms"]


def test_label_files_through_every_adapter(tmp_path):
    cases = R.make_label_cases(n_rows=10, big_rows=0)
    assert {c.fmt for c in cases} == set(R.LAYOUTS) | {"livec"}
    from qualitune.ingest import FORMATS

    assert {c.fmt for c in cases} == set(FORMATS)
    # every adapter's clean file and its damaged MOS; a seeded sample of the other damage
    rng = np.random.default_rng(0)
    core = [c for c in cases if c.name.split(":")[1] in ("clean", "bad_mos")]
    rest = [c for c in cases if c not in core]
    sample = core + [rest[i] for i in rng.choice(len(rest), size=4, replace=False)]
    tally = R.fuzz_labels(tmp_path, sample)
    d = _clean(tally)
    assert d["rows_lost"] == 0
    for fmt in FORMATS:
        assert tally.outcomes[f"{fmt}:clean"][0] == "scored"
        assert tally.outcomes[f"{fmt}:bad_mos"][0] == "reported"
    assert "not a number" in tally.outcomes["csv:bad_mos"][1] or "outside" in tally.outcomes["csv:bad_mos"][1]


@pytest.mark.slow
def test_full_run_prints_the_figures_with_nothing_lost(tmp_path):
    """The full sizes (≥ 1,000 media mutants, a 10^6-row label file, 1,000 soak requests)."""
    out = tmp_path / "reliability.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reliability.py"), "--seed", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == result
    media = [k for k in result if k.startswith("media_")]
    assert result["media_validate"]["cases"] >= 1000 and len(media) == 4
    for name in [*media, "labels"]:
        r = result[name]
        assert r["crashed"] == r["hung"] == r["lost"] == r["unexpected"] == 0, (name, r)
        assert not r.get("over_memory_bound"), (name, r)
    soak = result["soak"]
    assert soak["requests"] == 1000 and soak["admitted_errors"] == soak["shed_without_retry_after"] == 0
    assert soak["rss_growth_mb"] < soak["rss_bound_mb"]
    assert proc.returncode == 0, proc.stderr[-3000:]
