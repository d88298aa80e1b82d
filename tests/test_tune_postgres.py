"""Two `qualitune tune` workers on one Optuna study in a real PostgreSQL server (the multi-machine set-up).

A throwaway cluster is made with the server's own `initdb` / `pg_ctl` in a temporary folder (as the
`postgres` user when the tests run as root: the server refuses to run as root), listening on
127.0.0.1 only. Skipped, with the reason, when the PostgreSQL server binaries or the psycopg driver
(SQLAlchemy 2.1's default for `postgresql://`) are missing (Debian: `apt-get install postgresql`;
`pip install -e ".[dev]"`). Where the server binaries exist, `make test` sets
QUALITUNE_REQUIRE_POSTGRES=1 and a skip becomes a failure: CI (root on Debian, the server installed by
the Makefile) cannot pass without this test having run.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from qualitune.config import apply_tuned, load_params
from qualitune.search import parse_range_key
from test_tune import FINISHED, N, _project, _run_workers


def _pg_bindir() -> Path | None:
    """The folder of `initdb`/`pg_ctl`: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").is_file() and Path(d, "pg_ctl").is_file():
            return Path(d)
    return None


def _unavailable(reason: str) -> None:
    """Skip with the reason, or fail where the run requires PostgreSQL (QUALITUNE_REQUIRE_POSTGRES=1)."""
    if os.environ.get("QUALITUNE_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason} (QUALITUNE_REQUIRE_POSTGRES=1: this run must test PostgreSQL, not skip it)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A fresh PostgreSQL cluster on 127.0.0.1 with an empty database `optuna`; yields its URL."""
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is missing: pip install -e '.[dev]'")
    run_as: dict = {}
    if os.geteuid() == 0:  # postgres refuses to run as root: use the postgres system user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run the server as")
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    root = Path(
        tempfile.mkdtemp(prefix="qualitune-pg-")
    )  # not under pytest's 0700 tmp: postgres must reach it
    if run_as:
        os.chown(root, run_as["user"], run_as["group"])
    data, port = root / "data", _free_port()

    def pg(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bindir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120, **run_as, **kw
        )

    res = pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    assert res.returncode == 0, res.stdout + res.stderr
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    res = pg("pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "server.log"), "-w", "-t", "60", "start")
    if res.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {res.stdout}{res.stderr}{log}")
    try:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as c:
            c.execute("CREATE DATABASE optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(postgres_url, tmp_path):
    project = _project(tmp_path / "p", storage=postgres_url)
    t0 = time.perf_counter()
    outs = _run_workers(project, 2, timeout=600)
    assert all("postgresql://postgres@127.0.0.1" in out for out in outs)  # both used the server
    study = optuna.load_study(study_name="qualitune", storage=postgres_url)
    trials = study.get_trials()
    print(f"two workers on PostgreSQL: {time.perf_counter() - t0:.1f} s, {[t.state.name for t in trials]}")
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == N  # exactly n_trials, together
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in trials:  # anything else failed honestly: a NaN value or a surplus trial given up
        assert t.state in FINISHED or t.user_attrs.get("surplus") or "fail_reason" in t.user_attrs
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete, "no trial completed"
    best = max(complete, key=lambda t: t.value)
    tuned = apply_tuned(load_params(project / "params.yaml"), project / "tuned_params.yaml")
    assert tuned["train"]["lr"] == pytest.approx(best.params["lr"])
    assert tuned["train"]["label_range"] == parse_range_key(best.params["label_range"])
    assert not (project / "optuna.db").exists()  # nothing fell back to the default sqlite storage


def test_a_run_that_requires_postgresql_fails_where_it_would_skip(monkeypatch):
    """`make test` sets QUALITUNE_REQUIRE_POSTGRES=1 where the server is installed: a missing piece must
    then fail the run (so a green CI means the shared-storage test ran), and skip elsewhere."""
    monkeypatch.setenv("QUALITUNE_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="must test PostgreSQL, not skip it"):
        _unavailable("initdb not found")
    monkeypatch.delenv("QUALITUNE_REQUIRE_POSTGRES")
    with pytest.raises(pytest.skip.Exception, match="initdb not found"):
        _unavailable("initdb not found")
