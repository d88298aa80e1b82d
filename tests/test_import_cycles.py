"""No import cycles between qualitune's modules, function-level imports included.

A cycle kept alive by moving one import into a function still means two modules that cannot be
understood (or tested, or moved) apart, and it breaks as soon as someone hoists the import. This
test reads every module's imports (top level, inside functions, under ``TYPE_CHECKING``: all count)
and fails on any strongly connected component of more than one module, naming the edges.

A package's ``__init__`` re-exporting its own submodules is not counted as an edge back from the
submodule: Python runs the parent package first by construction, and the submodules do not import
the package's names.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``module -> {qualitune modules it imports anywhere}`` for every module under ``src/qualitune``."""
    files = {}
    for path in sorted((src / "qualitune").rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        files[".".join(parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names
                ]
            else:
                continue
            edges |= {t for t in targets if t in files and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_detector_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "qualitune"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from qualitune.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from qualitune import a\n    return a\n")
    (pkg / "c.py").write_text("import qualitune.a\n")
    assert cycles(module_graph(tmp_path)) == [["qualitune.a", "qualitune.b"]]
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    assert cycles(module_graph(tmp_path)) == []


def test_no_import_cycles_between_modules():
    graph = module_graph()
    assert len(graph) > 50  # the walk found the package
    found = cycles(graph)
    lines = [
        f"{' <-> '.join(c)}: " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in found
    ]
    assert not found, "import cycles (break them by moving the shared piece down a layer):\n" + "\n".join(
        lines
    )
