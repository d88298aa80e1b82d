"""`dvc.yaml` lists, for every stage, the code the stage really runs.

DVC reruns a stage only when one of its deps changes, so a module the stage imports but does not
list is a stale-result bug: edit it, and `dvc repro` keeps the old outputs. This test walks each
stage's import closure (every `import qualitune...` in a module, function-level imports included,
plus the `__init__.py` of every package on the way, which Python runs first) and compares it with
the stage's `src/` deps: nothing may be missing, and no listed file may be outside the closure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# The version string only: a release bump should not rerun the pipeline.
EXEMPT = {"src/qualitune/__init__.py"}
# Code a stage uses by path, not by import: listed, though outside the import closure.
BY_PATH = {"register": {"src/qualitune/pyfunc_model.py"}}  # registry.PYFUNC_CODE, the MLflow model's code


def _module_file(name: str) -> Path | None:
    base = SRC / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """Names of qualitune modules (or candidate `package.attribute` modules) a file imports."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "qualitune"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "qualitune":
                out.add(node.module)
                out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def import_closure(module: str) -> set[str]:
    """Repository-relative paths of every source file that importing `module` can execute."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = _module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += sorted(_imported(path))
    return {p.relative_to(ROOT).as_posix() for p in seen}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    """Whether `path` is one of `deps` or inside a listed folder."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_deps_equal_its_import_closure(stage: str) -> None:
    spec = _stages()[stage]
    module = spec["cmd"].split()[-1]
    assert spec["cmd"].startswith("python -m qualitune."), spec["cmd"]
    closure = import_closure(module) - EXEMPT
    deps = [d for d in spec.get("deps", []) if isinstance(d, str) and d.startswith("src/")]
    missing = sorted(p for p in closure if not _covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not list: {missing}"
    code = [d for d in deps if (d.endswith(".py") or (ROOT / d).is_dir()) and d not in BY_PATH.get(stage, ())]
    extra = [d for d in code if not any(_covered(p, [d]) for p in closure)]
    assert not extra, f"dvc.yaml stage {stage!r} lists code it never imports: {extra}"


def test_the_closure_follows_function_level_and_package_imports() -> None:
    """The walk itself: a stage module's closure holds its package's __init__ (run first), what
    that imports, and modules imported only inside functions."""
    closure = import_closure("qualitune.stages.train")
    assert "src/qualitune/stages/__init__.py" in closure
    assert "src/qualitune/config.py" in closure  # imported by stages/__init__.py
    assert "src/qualitune/stages/train.py" in closure
    assert "src/qualitune/vlm/backends/compact/modeling.py" in closure  # reached through the model builders
    assert not any(p.startswith("src/qualitune/commands/") for p in closure)


def test_code_used_by_path_exists() -> None:
    for stage, paths in BY_PATH.items():
        assert stage in _stages()
        for path in paths:
            assert (ROOT / path).is_file(), path
            assert path in _stages()[stage]["deps"], (stage, path)
