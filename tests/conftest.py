"""Imported by pytest before any test module: qualitune first, so its OMP_WAIT_POLICY default
(`qualitune/__init__.py`) is in place before a test module's `import torch` loads libgomp.

Also the fixtures more than one test module uses: one Prefect test server per session, and the
retraining flow loaded once."""

import importlib.util
import sys
from pathlib import Path

import pytest

import qualitune  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test server (a subprocess, a throwaway database); PREFECT_API_URL points at it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def flows(prefect_harness):
    """flows/retrain.py as a module (flows/ is not a package)."""
    spec = importlib.util.spec_from_file_location("qualitune_flows_retrain", ROOT / "flows" / "retrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


POSTGRES_TEST = "tests/test_tune_postgres.py::test_two_workers_share_one_postgresql_study"


def pytest_terminal_summary(terminalreporter):
    """One line in the log on whether the PostgreSQL shared-storage test ran (CI must show it did)."""
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            # a pass is the call's report; a skip (or a failed fixture) is the setup's
            if getattr(rep, "nodeid", "") == POSTGRES_TEST and (rep.when == "call" or outcome != "passed"):
                terminalreporter.write_line(
                    f"PostgreSQL shared-storage test: {outcome} ({rep.duration:.1f} s)"
                )
