"""The import graph of src/ keeps its layers: library -> run layer -> entry points.

Read with Python's ``ast`` (every import, lazy ones inside functions included), so a
forbidden import fails here before anyone has to draw the graph.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src"
# Packages of the library, and what each may not import (beyond the run layer, the
# reporting layer and the entry points, which no library module imports).
LIBRARY = ("utils", "masking", "models", "data", "methods")
FORBIDDEN = {
    "masking": ("pytorch_lightning", "lightning", "src.data", "src.methods"),
    "data": ("src.methods",),
    "methods": ("src.data",),
}


def within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
ENTRY_POINTS = sorted(
    name for name, path in MODULES.items() if path.parent == SRC and path.stem != "__init__"
)


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a import b`` counts a.b when it is one)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def src_imports(name: str) -> set[str]:
    return {m for m in imported(MODULES[name]) if m in MODULES and m != name}


GRAPH = {name: src_imports(name) for name in MODULES}


def layer(name: str) -> str:
    parts = name.split(".")
    return "entry" if name in ENTRY_POINTS else parts[1] if len(parts) > 1 else "src"


def test_the_graph_was_read() -> None:
    assert {"src.train", "src.eval", "src.predict"} <= set(ENTRY_POINTS)
    assert "src.runs.builders" in GRAPH["src.runs.single"]
    assert "src.runs.sweep" in GRAPH["src.train"] and "src.runs" in GRAPH["src.runs.sweep"]


def test_no_import_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            pytest.fail(f"import cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for target in sorted(GRAPH[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(GRAPH):
        visit(name, [])


def test_no_module_imports_an_entry_point() -> None:
    offenders = [(a, b) for a, targets in GRAPH.items() for b in targets if b in ENTRY_POINTS]
    assert offenders == []


def test_the_library_never_imports_the_layers_above_it() -> None:
    above = ("src.runs", "src.reporting", *ENTRY_POINTS)
    offenders = [
        (name, target)
        for name in GRAPH
        if layer(name) in LIBRARY
        for target in imported(MODULES[name])
        if within(target, above)
    ]
    assert offenders == []


def test_the_run_layer_never_imports_reporting() -> None:
    offenders = [
        (name, target)
        for name in GRAPH
        if layer(name) == "runs"
        for target in imported(MODULES[name])
        if within(target, ("src.reporting",))
    ]
    assert offenders == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_library_packages_keep_their_own_dependencies(package: str) -> None:
    offenders = [
        (name, target)
        for name in GRAPH
        if layer(name) == package
        for target in imported(MODULES[name])
        if within(target, FORBIDDEN[package])
    ]
    assert offenders == []


def test_no_benchmark_code_under_src() -> None:
    benchmarks = [
        name
        for name, path in MODULES.items()
        if "bench" in path.stem
        or any(
            isinstance(node, ast.FunctionDef) and "bench" in node.name
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert benchmarks == []


def test_entry_points_are_thin() -> None:
    sizes = {name: len(MODULES[name].read_text().splitlines()) for name in ENTRY_POINTS}
    assert max(sizes.values()) <= 60, sizes
