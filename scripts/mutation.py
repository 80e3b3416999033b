"""Mutation testing of the core with cosmic-ray: which one-line bugs do the tests catch?

    python scripts/mutation.py [--scope <a module path under src/>] [--workers 2]
    python scripts/mutation.py --survivors [--scope ...]   # after adding tests: re-run only
                                                          # the last run's survivors

Each scope is one core module and the test files written for it. The script runs those
tests once under coverage with per-test contexts, so that each mutant is then tested by
only the tests that execute its line (lines run at import time get all of the scope's
tests). cosmic-ray edits files in place, so every worker mutates its own copy of the
working tree under results/mutation/; the checkout is never touched. Mutants no test
executes are reported apart ("not covered") and count as survivors; a mutation that leaves
no valid Python (cosmic-ray turns a signature's bare `*` into `+`) is left out of the score.

Prints the score per scope and overall, and writes results/mutation/report.md with every
surviving mutant's diff. Not part of CI (about an hour on 2 cores); docs/testing.md keeps
the last score and the reason for each survivor.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "mutation"


@dataclass(frozen=True)
class Scope:
    """A core module, the test files written for it (coverage picks, per line, which of
    their tests run) and, for a large module, the functions that are the core."""

    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()


SCOPES: dict[str, Scope] = {
    "src/piggyback_lab/methods/piggyback/threshold.py": Scope(("tests/test_masking.py",)),
    "src/piggyback_lab/methods/piggyback/layers.py": Scope(
        ("tests/test_masking.py", "tests/test_properties.py")
    ),
    "src/piggyback_lab/methods/piggyback/masks.py": Scope(
        ("tests/test_masking.py", "tests/test_properties.py")
    ),
    "src/piggyback_lab/taskfile.py": Scope(
        (
            "tests/test_taskfile_format.py",
            "tests/test_piggyback_taskfile.py",
            "tests/test_properties.py",
        )
    ),
    "src/piggyback_lab/methods/piggyback/task.py": Scope(
        (
            "tests/test_piggyback_task.py",
            "tests/test_piggyback_taskfile.py",
            "tests/test_multitask.py",
            "tests/test_bundle.py",
        )
    ),
    "src/piggyback_lab/methods/piggyback/module.py": Scope(
        ("tests/test_configs.py", "tests/test_masking.py")
    ),
    "src/piggyback_lab/methods/packnet/state.py": Scope(
        ("tests/test_host_and_owners.py", "tests/test_packnet.py", "tests/test_properties.py")
    ),
    "src/piggyback_lab/methods/multitask.py": Scope(
        ("tests/test_host_and_owners.py", "tests/test_multitask.py", "tests/test_properties.py")
    ),
    "src/piggyback_lab/methods/base.py": Scope(
        ("tests/test_task_module.py", "tests/test_configs.py", "tests/test_api.py")
    ),
    "src/piggyback_lab/runs/identity.py": Scope(
        ("tests/test_identity.py", "tests/test_trust.py", "tests/test_properties.py")
    ),
    "src/piggyback_lab/runs/records.py": Scope(
        ("tests/test_records.py", "tests/test_tables.py", "tests/test_properties.py")
    ),
    "src/piggyback_lab/data/transforms.py": Scope(
        ("tests/test_transforms.py", "tests/test_configs.py")
    ),
    "src/piggyback_lab/methods/bitfit/task.py": Scope(("tests/test_new_methods.py",)),
    "src/piggyback_lab/methods/lora/layer.py": Scope(
        ("tests/test_lora.py", "tests/test_new_methods.py")
    ),
    "src/piggyback_lab/methods/lora/task.py": Scope(
        ("tests/test_lora_task.py", "tests/test_new_methods.py")
    ),
    "src/piggyback_lab/methods/ssf/layer.py": Scope(
        ("tests/test_ssf.py", "tests/test_ssf_task.py", "tests/test_new_methods.py")
    ),
    "src/piggyback_lab/methods/ssf/task.py": Scope(
        ("tests/test_ssf_task.py", "tests/test_new_methods.py")
    ),
    "src/piggyback_lab/methods/residual_adapters/layer.py": Scope(
        (
            "tests/test_residual_adapters.py",
            "tests/test_adapter_task.py",
            "tests/test_new_methods.py",
        )
    ),
    "src/piggyback_lab/methods/residual_adapters/task.py": Scope(
        (
            "tests/test_adapter_task.py",
            "tests/test_residual_adapters.py",
            "tests/test_new_methods.py",
        )
    ),
    "src/piggyback_lab/methods/affine_masks/layer.py": Scope(
        ("tests/test_affine_masks.py", "tests/test_new_methods.py")
    ),
    "src/piggyback_lab/methods/affine_masks/task.py": Scope(
        ("tests/test_affine_masks.py", "tests/test_new_methods.py")
    ),
    "src/piggyback_lab/methods/registry.py": Scope(
        (
            "tests/test_task_checks.py",
            "tests/test_new_methods.py",
            "tests/test_method_registry.py",
            "tests/test_lora_task.py",
        )
    ),
    "src/piggyback_lab/reporting/tables.py": Scope(
        ("tests/test_tables.py",), ("summarize", "storage_frame", "decathlon_scores")
    ),
    "src/piggyback_lab/reporting/decathlon.py": Scope(
        ("tests/test_decathlon.py",), ("domain_points", "decathlon_score", "score_records")
    ),
}

# Binary-operator swaps outside + - * / mostly raise a TypeError on tensors and floats (a
# kill that says nothing); cosmic-ray's variable operators rename names at random.
EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_(?!(Add|Sub|Mul|Div|FloorDiv)_(Add|Sub|Mul|Div)$).*",
    r"core/Variable.*",
]
PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-m", "not slow"]
PYTEST = [sys.executable, "-m", "pytest", *PYTEST_ARGS]
TIMEOUT_S = 300.0
# Imported once by each worker's test server, before any module of the project: a mutant's
# tests then start in a forked child in about a second instead of importing these again.
WARM_IMPORTS = (
    "torch", "torchvision", "pytorch_lightning", "torchmetrics", "hydra", "omegaconf",
    "numpy", "pandas", "PIL.Image", "safetensors.torch", "hypothesis", "pytest",
)  # fmt: skip


def tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    return [f for f in listed.split("\0") if f and (ROOT / f).is_file()]


def make_copy(dest: Path) -> Path:
    """The working tree as git sees it (tracked and unignored files), under ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    for name in tracked_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def covering_tests(
    work: Path, module: str, tests: list[str]
) -> tuple[dict[str, list[str]], dict[str, float]]:
    """(line number as a string -> the test node ids that execute it, with "0": every test
    of the scope, for lines that run at import time under no test's context; each test's
    seconds in that run)."""
    data_file, junit = work / ".coverage", work / ".mutation" / "baseline.xml"
    data_file.unlink(missing_ok=True)
    run = subprocess.run(
        [*PYTEST, f"--basetemp={work / '.tmp'}", f"--cov={work / Path(module).parent}",
         "--cov-context=test", "--cov-report=", f"--junitxml={junit}", *tests],
        cwd=work, capture_output=True, text=True,
    )  # fmt: skip
    if run.returncode != 0:
        tail = "\n".join(run.stdout.splitlines()[-15:])
        sys.exit(f"error: the tests of {module} fail before any mutation:\n{tail}")
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    path = str((work / module).resolve())
    lines: dict[str, list[str]] = {}
    for line, contexts in (data.contexts_by_lineno(path) or {}).items():
        ids = sorted({c.rsplit("|", 1)[0] for c in contexts if c})
        lines[str(line)] = ids if ids else ["*"]
    lines["0"] = tests
    return lines, test_durations(junit)


def test_durations(junit: Path) -> dict[str, float]:
    """Node id -> seconds, from the baseline run's JUnit XML (to run the fastest first)."""
    import xml.etree.ElementTree as ET

    durations = {}
    for case in ET.parse(junit).iter("testcase"):
        path = case.get("classname", "").replace(".", "/") + ".py"
        durations[f"{path}::{case.get('name')}"] = float(case.get("time", 0))
    return durations


def function_lines(path: Path, functions: tuple[str, ...]) -> list[str]:
    """Line spans ("start-end") of the named top-level functions; every line without names."""
    tree = ast.parse(path.read_text())
    if not functions:
        return [f"1-{len(path.read_text().splitlines())}"]
    spans = {
        n.name: f"{n.lineno}-{n.end_lineno}" for n in tree.body if isinstance(n, ast.FunctionDef)
    }
    missing = sorted(set(functions) - set(spans))
    if missing:
        sys.exit(f"error: {path.name} has no function {', '.join(missing)}; update SCOPES")
    return [spans[f] for f in functions]


def changed_lines(original: str, mutated: str) -> set[int]:
    matcher = difflib.SequenceMatcher(a=original.splitlines(), b=mutated.splitlines())
    changed: set[int] = set()
    for tag, i1, i2, _, _ in matcher.get_opcodes():
        if tag != "equal":
            changed.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return changed


def test_mutant(scope: str) -> int:
    """cosmic-ray's test command: the tests that execute the mutated lines, in the copy."""
    work = Path.cwd()
    state = json.loads((work / ".mutation" / "scope.json").read_text())
    original = (work / ".mutation" / "original.py").read_text()
    mutated = (work / scope).read_text()
    try:
        compile(mutated, scope, "exec")
    except SyntaxError:  # e.g. a signature's bare `*` made `+`: no program, so no mutant
        print("does not compile: left out of the score")
        return 0
    selected: set[str] = set()
    for line in changed_lines(original, mutated):
        ids = state["lines"].get(str(line), [])
        selected.update(state["lines"]["0"] if "*" in ids else ids)
    if not selected:
        print("not covered: no test executes the mutated line")
        return 0
    args = ["-x", f"--basetemp={work / '.tmp'}", *sorted(selected)]
    socket_path = work / ".mutation" / "server.sock"
    if not socket_path.exists():
        return subprocess.run([*PYTEST, *args]).returncode
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(socket_path))
        conn.sendall(json.dumps({"cwd": str(work), "args": [*PYTEST_ARGS, *args]}).encode())
        conn.shutdown(socket.SHUT_WR)
        return int(conn.makefile().read() or 1)


def serve(socket_path: Path) -> None:
    """A worker's test server: imports WARM_IMPORTS once, then runs each request's pytest
    in a forked child, which imports the project's (mutated) modules afresh."""
    import importlib
    import signal

    for name in WARM_IMPORTS:
        importlib.import_module(name)
    import pytest

    socket_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(socket_path))
        server.listen()
        while True:
            conn, _ = server.accept()
            with conn:
                request = json.loads(conn.makefile().read())
                pid = os.fork()
                if pid == 0:  # the child: one mutant's tests, then exit
                    server.close()
                    os.chdir(request["cwd"])
                    sys.path.insert(0, request["cwd"])
                    signal.alarm(int(TIMEOUT_S))
                    os._exit(int(pytest.main(request["args"])))
                _, status = os.waitpid(pid, 0)
                conn.sendall(str(os.waitstatus_to_exitcode(status) or 0).encode())


def mutate_scope(scope: str, work: Path, survivors_only: bool = False) -> dict:
    """Run every mutant of one module in the copy ``work``; its results by outcome.

    ``survivors_only``: run again only the mutants that survived the last run (after tests
    were added), keeping every other result; the module must be the one that run mutated."""
    (work / ".mutation").mkdir(exist_ok=True)
    shutil.copy2(work / scope, work / ".mutation" / "original.py")
    lines, durations = covering_tests(work, scope, list(SCOPES[scope].tests))
    state = {"lines": lines, "durations": durations}
    (work / ".mutation" / "scope.json").write_text(json.dumps(state))
    name = scope.replace("/", "_").removesuffix(".py")
    config, db = work / ".mutation" / f"{name}.toml", OUT / f"{name}.sqlite"
    excluded = ", ".join(json.dumps(e) for e in EXCLUDED_OPERATORS)
    spans = function_lines(work / scope, SCOPES[scope].functions)
    config.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{scope}"\n'
        f"timeout = {TIMEOUT_S}\n"
        "excluded-modules = []\n"
        f'test-command = "{sys.executable} {ROOT / "scripts" / "mutation.py"} --test {scope}"\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
        f"[cosmic-ray.filters.operators-filter]\nexclude-operators = [{excluded}]\n"
        f"[cosmic-ray.filters.line-filter.lines]\n{json.dumps(scope)} = {json.dumps(spans)}\n"
    )
    source, bin_dir = OUT / f"{name}.source.py", Path(sys.executable).parent
    if survivors_only:
        if not db.exists() or not source.exists():
            sys.exit(f"error: {scope} has no earlier run under {OUT}; run it without --survivors")
        if source.read_text() != (work / scope).read_text():
            sys.exit(f"error: {scope} changed since its last run; run it without --survivors")
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    else:
        db.unlink(missing_ok=True)
        shutil.copy2(work / scope, source)
        for step in (
            ["cosmic-ray", "init", config, db],
            ["cr-filter-operators", db, config],
            ["cr-filter-pragma", db],  # lines marked "# pragma: no mutate"
            ["cr-filter-lines", "--config", config, db],  # the scope's functions only
        ):
            command = [str(bin_dir / step[0]), *map(str, step[1:])]
            subprocess.run(command, cwd=work, check=True, capture_output=True)
    start = time.monotonic()
    socket_path = work / ".mutation" / "server.sock"
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "mutation.py"), "--serve", str(socket_path)],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while not socket_path.exists() and server.poll() is None:
            time.sleep(0.2)
        subprocess.run([str(bin_dir / "cosmic-ray"), "exec", str(config), str(db)], cwd=work,
                       check=True, capture_output=True)  # fmt: skip
    finally:
        server.kill()
        server.wait()
        socket_path.unlink(missing_ok=True)
    result = read_results(db, lines)
    result["seconds"] = round(time.monotonic() - start)
    print(f"{scope}: {summary_line(result)} in {result['seconds']} s", flush=True)
    return result


def read_results(db: Path, lines: dict[str, list[str]]) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    result: dict = {"killed": 0, "survived": [], "not_covered": [], "skipped": 0, "errors": 0,
                    "not_compiling": 0}  # fmt: skip
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        for item, outcome in work_db.completed_work_items:
            if outcome.worker_outcome == WorkerOutcome.SKIPPED:
                result["skipped"] += 1
            elif outcome.worker_outcome != WorkerOutcome.NORMAL:
                result["errors"] += 1
            elif outcome.test_outcome == TestOutcome.SURVIVED:
                mutation = item.mutations[0]
                entry = {"operator": mutation.operator_name,
                         "line": mutation.start_pos[0], "diff": outcome.diff}  # fmt: skip
                output = outcome.output or ""
                if "does not compile" in output:
                    result["not_compiling"] += 1
                    continue
                result["not_covered" if "not covered" in output else "survived"].append(entry)
            else:  # killed, timed out or incompetent (an import error): the tests noticed
                result["killed"] += 1
    return result


def score(result: dict) -> float | None:
    alive = len(result["survived"]) + len(result["not_covered"])
    total = result["killed"] + alive
    return 100.0 * result["killed"] / total if total else None


def summary_line(result: dict) -> str:
    s = score(result)
    return (
        f"{result['killed']} killed, {len(result['survived'])} survived, "
        f"{len(result['not_covered'])} not covered"
        + (f" -> {s:.1f}%" if s is not None else "")
        + (f" ({result['errors']} worker errors)" if result["errors"] else "")
        + (f" ({n} not compiling, left out)" if (n := result["not_compiling"]) else "")
    )


def write_report(results: dict[str, dict], path: Path, final: bool = False) -> None:
    total = {"killed": 0, "survived": [], "not_covered": [], "errors": 0, "not_compiling": 0}
    out = ["# Mutation report", "", "| module | killed | survived | not covered | score |",
           "|---|---:|---:|---:|---:|"]  # fmt: skip
    for scope, r in results.items():
        s = score(r)
        out.append(
            f"| {scope} | {r['killed']} | {len(r['survived'])} | {len(r['not_covered'])} | "
            f"{'' if s is None else f'{s:.1f}%'} |"
        )
        for key in ("killed", "errors", "not_compiling"):
            total[key] += r[key]
        total["survived"] += r["survived"]
        total["not_covered"] += r["not_covered"]
    out += ["", f"Overall: {summary_line(total)}", ""]
    for scope, r in results.items():
        for kind in ("survived", "not_covered"):
            for m in r[kind]:
                out += [f"## {scope}:{m['line']} {m['operator']} ({kind.replace('_', ' ')})",
                        "", "```diff", (m["diff"] or "").strip(), "```", ""]  # fmt: skip
    path.write_text("\n".join(out))
    if final:
        print(f"overall: {summary_line(total)}\nreport: {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scope", nargs="*", choices=list(SCOPES), default=list(SCOPES))
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants that survived the last run (after adding tests)",
    )
    parser.add_argument("--test", help=argparse.SUPPRESS)  # cosmic-ray's test command
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # a worker's server
    args = parser.parse_args()
    if args.test:
        sys.exit(test_mutant(args.test))
    if args.serve:
        serve(args.serve)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    copies = [make_copy(OUT / f"work-{i}") for i in range(args.workers)]
    free, lock = list(copies), threading.Lock()
    results: dict[str, dict] = {}

    def run(scope: str) -> None:
        work = free.pop()
        try:
            result = mutate_scope(scope, work, args.survivors)
        finally:
            shutil.copy2(ROOT / scope, work / scope)  # the pristine module, for the next scope
            free.append(work)
        with lock:  # the report so far: a run stopped early keeps what it measured
            results[scope] = result
            write_report({s: results[s] for s in args.scope if s in results}, OUT / "report.md")

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(run, args.scope))
    write_report({s: results[s] for s in args.scope}, OUT / "report.md", final=True)
    for work in copies:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
