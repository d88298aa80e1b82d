"""`dvc.yaml` lists, for every stage, exactly the params keys the stage reads.

DVC reruns a stage when one of its listed params changes, so a key the stage reads but does not list
is a stale-result bug (edit it, and `dvc repro` keeps the old outputs), and a listed key it never
reads reruns it for nothing. The test runs every stage of the pipeline, in `dvc.yaml`'s order, on a
small real project (tests/project_factory.py: the tiny Qwen, a few PNGs), each through its own
`main()` with the params mapping replaced by a recorder, and compares what each stage read with its
`params:` list:

- a read of a value (`params["pmod"]["out"]`, `.get("data")` of a missing key, `"x" in section`)
  records its path, e.g. `pmod.out`;
- walking a mapping (`.items()`, `dict(section)`, iteration) records the whole mapping, e.g. `train`
  when the typed reader checks the train section's keys;
- the copy of every param that `start_run` logs to MLflow is lineage, not an input, and is not
  recorded.

A read is covered by a listed key equal to it or above it (`train` covers `train.lora.r`); every
listed key must be read at or below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from project_factory import make_project, tiny_params

ROOT = Path(__file__).resolve().parents[1]


class Recorder(dict):
    """A params mapping that records, in `log`, the dotted path of every value read from it."""

    def __init__(self, data: dict, log: set[str], path: str = "", paused: list[bool] | None = None):
        super().__init__(data)
        self._log, self._path, self._paused = log, path, paused if paused is not None else [False]

    def _at(self, key: Any) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def _note(self, path: str) -> None:
        if not self._paused[0] and path:
            self._log.add(path)

    def _wrap(self, key: Any, value: Any) -> Any:
        if isinstance(value, dict) and not isinstance(value, Recorder):
            value = Recorder(value, self._log, self._at(key), self._paused)
            super().__setitem__(key, value)  # one child per key: its reads land under its path
        elif not isinstance(value, dict):
            self._note(self._at(key))
        return value

    def __getitem__(self, key: Any) -> Any:
        return self._wrap(key, super().__getitem__(key))

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        self._note(self._at(key))  # a missing key read with a default is still a read
        return default

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if not found or not isinstance(super().__getitem__(key), dict):
            self._note(self._at(key))
        return found

    def _whole(self) -> None:
        self._note(self._path)

    def __iter__(self) -> Iterator[Any]:
        self._whole()
        return super().__iter__()

    def keys(self):  # noqa: D102
        self._whole()
        return super().keys()

    def items(self):  # noqa: D102
        self._whole()
        return [(k, self._wrap(k, v)) for k, v in super().items()]

    def values(self):  # noqa: D102
        self._whole()
        return [self._wrap(k, v) for k, v in super().items()]

    @contextmanager
    def pause(self) -> Iterator[None]:
        before, self._paused[0] = self._paused[0], True
        try:
            yield
        finally:
            self._paused[0] = before


def _covered(read: str, listed: list[str]) -> bool:
    return any(read == p or read.startswith(p + ".") for p in listed)


def _used(param: str, reads: set[str]) -> bool:
    return any(r == param or r.startswith(param + ".") or param.startswith(r + ".") for r in reads)


def test_the_recorder_records_values_walks_and_missing_keys():
    log: set[str] = set()
    p = Recorder({"a": {"out": "x", "lora": {"r": 8}}, "b": {"n": 1}, "c": {"k": 2}}, log)
    assert p["a"]["out"] == "x" and p["a"]["lora"].get("alpha", 16) == 16 and "seed" not in p["b"]
    assert dict(p["c"]) == {"k": 2}
    with p.pause():
        assert yaml.safe_dump(dict(p["b"]))  # e.g. the copy logged to MLflow
    assert log == {"a.out", "a.lora.alpha", "b.seed", "c", "c.k"}
    assert _covered("a.lora.r", ["a"]) and not _covered("a.output", ["a.out"])
    assert _used("a", {"a.out"}) and _used("a.lora", {"a"}) and not _used("b", {"bb.n"})


@contextmanager
def _recording(monkeypatch: pytest.MonkeyPatch, reads: dict[str, set[str]], stage: str) -> Iterator[None]:
    """Stages load their params through `qualitune.stages.load_params`: hand them a recorder, and
    pause it while `qualitune.tracking.start_run` flattens the params it logs to MLflow."""
    import qualitune.stages as stages
    import qualitune.tracking as tracking

    log = reads.setdefault(stage, set())
    real_load, real_flatten = stages.load_params, tracking.flatten_params
    holder: list[Recorder] = []

    def load(path):
        holder.append(Recorder(real_load(path), log))
        return holder[-1]

    def flatten(d, prefix=""):
        if not holder:
            return real_flatten(d, prefix)
        with holder[-1].pause():
            return real_flatten(d, prefix)

    with monkeypatch.context() as m:
        m.setattr(stages, "load_params", load)
        m.setattr(tracking, "flatten_params", flatten)
        yield


def test_every_stage_lists_exactly_the_params_it_reads(tmp_path, monkeypatch):
    import importlib

    params = tiny_params()
    params["tune"]["n_trials"] = 1  # one real trial: with none the stage stops before reading its inputs
    project = make_project(tmp_path / "project", n_items=24, params=params)
    monkeypatch.chdir(project)
    monkeypatch.setenv("QUALITUNE_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    reads: dict[str, set[str]] = {}
    for name in stages:  # dvc.yaml's order is the pipeline's
        module = importlib.import_module(f"qualitune.stages.{name}")
        with _recording(monkeypatch, reads, name):
            assert module.main(["--params", "params.yaml"]) == 0, name
    problems = []
    for name, stage in stages.items():
        listed = [str(p) for p in stage.get("params", [])]
        missing = sorted(r for r in reads[name] if not _covered(r, listed))
        unused = sorted(p for p in listed if not _used(p, reads[name]))
        if missing or unused:
            problems.append(f"{name}: reads but does not list {missing}; lists but never reads {unused}")
    assert not problems, "\n".join(problems) + f"\nreads: { {k: sorted(v) for k, v in reads.items()} }"
