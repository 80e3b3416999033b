"""The import graph of src/ keeps its layers: library -> run layer -> entry points.

Read with Python's ``ast`` (every import, lazy ones inside functions included), so a
forbidden import fails here before anyone has to draw the graph.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src"
LIBRARY_PACKAGE = "piggyback_lab"
# Packages of the library, and what each may not import (beyond the run layer, the
# reporting layer and the entry points, which no library module imports).
LIBRARY = ("utils", "taskfile", "models", "data", "methods")
FORBIDDEN = {
    "taskfile": ("pytorch_lightning", "lightning", "piggyback_lab.data", "piggyback_lab.methods"),
    "data": ("piggyback_lab.methods",),
    "methods": ("piggyback_lab.data",),
}


def within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    """``src/piggyback_lab/runs/single.py`` -> piggyback_lab.runs.single (the library, as it
    is imported); ``src/train.py`` -> src.train (an entry point of the clone)."""
    parts = path.relative_to(SRC).with_suffix("").parts
    parts = parts if parts[0] == LIBRARY_PACKAGE else ("src", *parts)
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
    assert "piggyback_lab.runs.builders" in GRAPH["piggyback_lab.runs.single"]
    assert (
        "piggyback_lab.runs.sweep" in GRAPH["src.train"]
        and "piggyback_lab.runs" in GRAPH["piggyback_lab.runs.sweep"]
    )


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
    above = ("piggyback_lab.runs", "piggyback_lab.reporting", *ENTRY_POINTS)
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
        if within(target, ("piggyback_lab.reporting",))
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


def _package(name: str) -> str:
    """The top package of a module (piggyback_lab.methods.piggyback.task ->
    piggyback_lab.methods)."""
    return ".".join(name.split(".")[:2])


def test_no_package_cycle() -> None:
    """Packages, not only modules, import one way (models never imports methods back)."""
    packages: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        packages.setdefault(_package(name), set()).update(
            _package(t) for t in targets if _package(t) != _package(name)
        )

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            t == goal or (t not in seen and reaches(t, goal, seen | {t}))
            for t in packages.get(start, ())
        )

    cycles = sorted(p for p in packages if reaches(p, p, {p}))
    assert cycles == []


def test_no_library_module_is_a_command_line() -> None:
    """Command lines are entry points (src/*.py); the library and the run layer have none."""
    offenders = [
        name
        for name, path in MODULES.items()
        if name not in ENTRY_POINTS
        and (
            "argparse" in imported(path)
            or any(
                isinstance(node, ast.Compare)
                and isinstance(node.left, ast.Name)
                and node.left.id == "__name__"
                for node in ast.walk(ast.parse(path.read_text()))
            )
        )
    ]
    assert offenders == []


def _method_names() -> set[str]:
    from piggyback_lab.methods.registry import METHODS

    return {m.name for m in METHODS.values()} | {m.kind for m in METHODS.values()}


def _named(node: ast.AST, names: set[str]) -> list[str]:
    """The method or kind names a comparison operand or a mapping key spells out."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [n.value for n in items if isinstance(n, ast.Constant) and n.value in names]


def name_branches(path: Path, names: set[str]) -> list[str]:
    """Where ``path`` compares with, or maps, a method's or a task kind's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        spelled: list[str] = []
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                spelled += _named(operand, names)
        elif isinstance(node, ast.Dict):  # a mapping keyed by method names (not a record)
            keyed = [_named(key, names) if key is not None else [] for key in node.keys]
            if keyed and all(keyed):
                spelled += [n for key in keyed for n in key]
        elif isinstance(node, ast.MatchValue):
            spelled += _named(node.value, names)
        found += [f"{path.name}:{node.lineno}: {n!r}" for n in spelled]
    return found


def method_package(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "methods" else None


def test_no_branch_on_a_method_name_outside_its_package() -> None:
    """Nothing outside piggyback_lab/methods/<name>/ decides by a method's or kind's name: it
    asks the registry (piggyback_lab/methods/registry.py) what the method does."""
    names = _method_names()
    assert {"piggyback", "finetune", "packnet", "classifier_only", "full"} <= names
    offenders = [
        hit
        for name, path in MODULES.items()
        if method_package(name) is None
        for hit in name_branches(path, names)
    ]
    assert offenders == []


def test_the_name_branch_check_finds_each_kind_of_branch(tmp_path: Path) -> None:
    branchy = tmp_path / "branchy.py"
    branchy.write_text(
        'def f(tf, k):\n    if tf.kind == "packnet":\n        return 1\n'
        '    return {"piggyback": 2}[k] if k in ("full", "x") else 3\n'
    )
    hits = name_branches(branchy, _method_names())
    assert sorted(h.split(": ")[1] for h in hits) == ["'full'", "'packnet'", "'piggyback'"]


MAX_FUNCTION_LINES = 60  # one screen: a function longer than this is split into named steps


def test_every_function_fits_on_one_screen() -> None:
    """A run reads top to bottom: no function under src/ is longer than one screen (ruff's
    C901 and PLR0915 keep their complexity and statement counts; this keeps their length)."""
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (length := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert long == []


# The run layer's spine and the records' writer: what they say of a trained state comes from
# the method's hooks (``state_facts``, ``as_pretrained``), never in a method's own words.
METHOD_NEUTRAL = ("single", "sequence", "records", "identity", "builders", "evaluate", "sweep")
# (piggyback_lab and piggyback-lab name the project, not the method)
METHOD_WORDS = re.compile(r"mask|threshold|prune|lora|adapter|packnet|piggyback(?![_-]lab)", re.I)


def spoken_words(path: Path) -> list[str]:
    """The names and strings of ``path``'s code (not its comments or docstrings) that use a
    method's vocabulary."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.alias):
            text = node.name
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = "" if id(node) in docstrings else node.value
        else:
            continue
        if METHOD_WORDS.search(text):
            words.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    return words


@pytest.mark.parametrize("module", METHOD_NEUTRAL)
def test_the_run_spine_speaks_no_methods_vocabulary(module: str) -> None:
    assert spoken_words(MODULES[f"{LIBRARY_PACKAGE}.runs.{module}"]) == []


def test_the_vocabulary_check_finds_a_methods_words(tmp_path: Path) -> None:
    spoken = tmp_path / "spoken.py"
    spoken.write_text(
        '"""Docstrings may say mask."""\nfrom x import add_masks\n'
        'def f(r):\n    """Nor here: threshold."""\n    # a mask in a comment is fine\n'
        '    return r["mask_density"], masked_layers(r)\n'
    )
    hits = sorted(h.split(": ", 1)[1] for h in spoken_words(spoken))
    assert hits == ["'add_masks'", "'mask_density'", "'masked_layers'"]


def test_no_package_named_src_is_installed() -> None:
    """The wheel's packages are found under src/ (the src layout), so ``src`` itself, the
    clone's entry points, is never installed beside other projects' (test_wheel.py builds the
    wheel and looks inside)."""
    import tomllib

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert find["find"]["where"] == ["src"] and find["find"]["include"] == [
        f"{LIBRARY_PACKAGE}*",
        "hydra_plugins*",
    ]
