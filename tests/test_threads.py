"""The thread wait policy qualitune sets for torch's OpenMP runtime (see `qualitune/__init__.py`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import qualitune, torch, os; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_qualitune_sets_a_sleeping_wait_policy_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    policy, threads = out.stdout.split()
    assert policy == expected
    assert int(threads) >= 1  # torch loaded after it, with its usual thread count
