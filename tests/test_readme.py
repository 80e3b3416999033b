"""Every command the README shows is valid as written: each training command composes
(every job of a sweep), every other command answers ``--help``, every make target exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from piggyback_lab.runs.config import check_command_line
from tests.conftest import ROOT, run_module

README = ROOT / "README.md"
PLACEHOLDER = "PLACEHOLDER"  # where the README writes <file>, <...>


def readme_commands() -> list[list[str]]:
    """The commands of the README's bash blocks and inline code (`python ...`), split as a
    shell would (comments dropped)."""
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    inline = re.findall(r"`(python [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = [re.sub(r"<[^<>]*>", PLACEHOLDER, line) for line in [*lines, *inline]]
    return [shlex.split(line, comments=True) for line in commands if line.strip()]


COMMANDS = readme_commands()
TRAIN = [c[3:] for c in COMMANDS if c[:3] == ["python", "-m", "src.train"]]
EVAL = [c[3:] for c in COMMANDS if c[:3] == ["python", "-m", "src.eval"]]
OTHER_MODULES = sorted(
    {c[2] for c in COMMANDS if c[:2] == ["python", "-m"] and c[2] not in ("src.train", "src.eval")}
)
SCRIPTS = sorted({c[1] for c in COMMANDS if c[0] == "python" and c[1].endswith(".py")})
MAKE_TARGETS = sorted(
    {c[1] for c in COMMANDS if c[0] == "make"}
    | set(re.findall(r"`make ([a-z-]+)`", README.read_text()))
)


def _as_written(args: list[str]) -> list[str]:
    """The arguments, without the README's placeholders (``...``, ``<file>``)."""
    return [a for a in args if a != "..." and PLACEHOLDER not in a]


def test_the_readme_shows_commands_of_every_kind() -> None:
    assert len(TRAIN) >= 10 and EVAL and len(OTHER_MODULES) >= 3 and SCRIPTS
    assert {"train", "test", "tables", "bench"} <= set(MAKE_TARGETS)


@pytest.mark.parametrize("args", TRAIN, ids=[" ".join(a) for a in TRAIN])
def test_training_command_composes_every_job(args: list[str]) -> None:
    check_command_line("config", _as_written(args))  # exits 2 with the reason if not


@pytest.mark.parametrize("args", EVAL, ids=[" ".join(a) for a in EVAL])
def test_eval_command_composes(args: list[str]) -> None:
    check_command_line("eval", _as_written(args))


@pytest.mark.parametrize("module", OTHER_MODULES)
def test_other_commands_answer_help(module: str) -> None:
    proc = run_module(module, "--help")
    assert proc.returncode == 0 and "usage" in (proc.stdout + proc.stderr).lower(), proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_answer_help(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "usage" in proc.stdout.lower(), proc.stderr


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_make_targets_exist(target: str) -> None:
    proc = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
