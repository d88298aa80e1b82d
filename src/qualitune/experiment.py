"""Pipeline variants as DVC experiments: `dvc exp run -S ...` from a committed params overlay.

`run_experiment("configs/params/real-data.yaml", name="real-data")` runs the same `dvc.yaml` stages
with the overlay's params (`qualitune.overlay`): DVC reruns only the stages whose params or deps
changed, restores the others from its run cache, and records the run as a named experiment
(`dvc exp show`, `dvc exp diff`). The overlay points every output at its own folders (e.g.
`models/real/`), so an experiment never overwrites the default pipeline's files. After the run the
workspace's `params.yaml` and `dvc.lock` are put back as they were (the experiment keeps its own
copies in its git ref), so the default `dvc repro` stays up to date; the experiment's outputs stay
on disk at the overlay's paths.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qualitune import overlay as ov

log = logging.getLogger(__name__)

RESTORED = ("params.yaml", "dvc.lock")


def experiment_params(
    overlays: str | Path | Sequence[str | Path],
    sets: Sequence[str] = (),
    params_path: str | Path = "params.yaml",
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The overlays' assignments plus `--set` ones (later wins), checked against params.yaml, and
    the params the experiment runs with."""
    from qualitune.config import load_params

    params = load_params(params_path)
    paths = [overlays] if isinstance(overlays, str | Path) else list(overlays)
    assignments = [a for p in paths for a in ov.leaves(ov.read_overlay(p), params)]
    assignments += [ov.parse_assignment(s) for s in sets]
    assignments = list(dict(assignments).items())  # one value per key: the last one given
    ov.check_keys(params, assignments)
    return assignments, ov.apply(params, assignments)


def dvc_command(
    name: str | None,
    assignments: Sequence[tuple[str, Any]],
    targets: Sequence[str] = (),
    params: dict[str, Any] | None = None,
) -> list[str]:
    """`dvc exp run [--name N --force] -S ... [targets]`; `params` (the workspace's) marks new keys."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run"]
    if name:
        cmd += ["--name", name, "--force"]  # --force: a rerun under the same name replaces it
    return cmd + ov.dvc_set_flags(assignments, params) + list(targets)


def run_experiment(
    overlays: str | Path | Sequence[str | Path],
    *,
    name: str | None = None,
    sets: Sequence[str] = (),
    targets: Sequence[str] = (),
    cwd: str | Path = ".",
) -> dict[str, Any]:
    """Run the experiment in the workspace, then restore params.yaml and dvc.lock; returns the
    params it ran with. Raises `subprocess.CalledProcessError` (DVC's own message is on stderr)
    when a stage fails; the files are restored either way."""
    cwd = Path(cwd)
    from qualitune.config import load_params

    assignments, params = experiment_params(overlays, sets, cwd / "params.yaml")
    cmd = dvc_command(name, assignments, targets, load_params(cwd / "params.yaml"))
    log.info("%s", " ".join(cmd[2:]))
    with tempfile.TemporaryDirectory(prefix="qualitune-exp-") as keep:
        for f in RESTORED:
            if (cwd / f).is_file():
                shutil.copy2(cwd / f, Path(keep) / f)
        # the stages call `python -m qualitune.stages.X`: this interpreter's folder (the venv) goes
        # first on PATH, so they run with the same installation as this command
        env = {
            **os.environ,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        try:
            subprocess.run(cmd, cwd=cwd, check=True, env=env)
        finally:
            for f in RESTORED:
                if (Path(keep) / f).is_file():
                    shutil.copy2(Path(keep) / f, cwd / f)
    return params


__all__ = ["dvc_command", "experiment_params", "run_experiment"]
