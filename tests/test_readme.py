"""Every command the README shows is valid as written: each training command composes
(every job of a sweep), every other command answers ``--help``, every make target exists.
The commands the docs (docs/*.md) show are held to the same. The README's first screen holds
the install, the command line and the Python API; its own-data config composes and reads
the layout it describes."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from piggyback_lab.runs.config import check_command_line
from tests.conftest import CONF, ROOT, make_image_folder, run_module

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PLACEHOLDER = "PLACEHOLDER"  # where the README writes <file>, <...>
FIRST_SCREEN = 80  # lines: what it is, the headline table, install, command line, Python API


def commands_of(path: Path) -> list[list[str]]:
    """The commands of a Markdown file's bash blocks and inline code (`python ...`), split
    as a shell would (comments dropped)."""
    text = path.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    inline = re.findall(r"`(python [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = [re.sub(r"<[^<>]*>", PLACEHOLDER, line) for line in [*lines, *inline]]
    return [shlex.split(line, comments=True) for line in commands if line.strip()]


def own_dataset() -> str:
    """The dataset config the README's "Your own data" shows (its ```yaml block)."""
    [block] = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    return block


OWN = yaml.safe_load(own_dataset())["name"]  # a dataset of the README's own: composed apart, below
COMMANDS = commands_of(README)
DOC_COMMANDS = [c for path in DOCS for c in commands_of(path) if c not in COMMANDS]
ALL = [c for c in [*COMMANDS, *DOC_COMMANDS] if f"dataset={OWN}" not in c]
TRAIN = list({tuple(c[3:]): c[3:] for c in ALL if c[:3] == ["python", "-m", "src.train"]}.values())
EVAL = list({tuple(c[3:]): c[3:] for c in ALL if c[:3] == ["python", "-m", "src.eval"]}.values())
OTHER_MODULES = sorted(
    {c[2] for c in ALL if c[:2] == ["python", "-m"] and c[2] not in ("src.train", "src.eval")}
)
SCRIPTS = sorted({c[1] for c in ALL if c[0] == "python" and c[1].endswith(".py")})
MAKE_TARGETS = sorted(
    {c[1] for c in ALL if c[0] == "make"}
    | {t for p in [README, *DOCS] for t in re.findall(r"`make ([a-z-]+)`", p.read_text())}
)


def _as_written(args: list[str]) -> list[str]:
    """The arguments, without the README's placeholders (``...``, ``<file>``)."""
    return [a for a in args if a != "..." and PLACEHOLDER not in a]


def test_the_readme_shows_commands_of_every_kind() -> None:
    train = [c for c in COMMANDS if c[:3] == ["python", "-m", "src.train"]]
    modules = {c[2] for c in COMMANDS if c[:2] == ["python", "-m"]}
    assert len(train) >= 10 and "src.eval" in modules and len(modules) >= 5
    assert any(c[0] == "python" and c[1].endswith(".py") for c in COMMANDS)
    readme_targets = {c[1] for c in COMMANDS if c[0] == "make"} | set(
        re.findall(r"`make ([a-z-]+)`", README.read_text())
    )
    assert {"train", "test", "tables", "bench"} <= readme_targets


def _first_line(pattern: str) -> int:
    """The 1-based line of the README where ``pattern`` first matches (0: nowhere)."""
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if re.search(pattern, line):
            return number
    return 0


def test_install_command_line_and_api_are_on_the_first_screen() -> None:
    lines = README.read_text().splitlines()
    starts = [i for i, line in enumerate(lines, 1) if line == "```python"]
    assert starts, "README.md shows no ```python block"
    api_end = next(i for i, line in enumerate(lines, 1) if i > starts[0] and line == "```")
    wanted = {
        "make train": r"^make train\b",
        "make test": r"^make test\b",
        "pip install .": r"^pip install \.(\s|$)",
        "a training command": r"^python -m src\.train dataset=cub backbone=resnet50\b",
        "a sweep": r"^python -m src\.train -m method\.threshold=",
        "make tables": r"^make tables\b",
        "the Python API example (its end)": None,
    }
    found = {what: _first_line(p) if p else api_end for what, p in wanted.items()}
    late = {what: line for what, line in found.items() if not 0 < line <= FIRST_SCREEN}
    assert not late, f"not within the README's first {FIRST_SCREEN} lines (0: missing): {late}"


def test_the_readme_holds_at_most_six_dated_figures() -> None:
    """Measured narratives, with their dates, live in docs/results.md."""
    dates = re.findall(r"\b\d{4}-\d{2}-\d{2}\b", README.read_text())
    assert len(dates) <= 6, f"{len(dates)} dates in README.md: move them to docs/results.md"


def test_the_readme_own_dataset_config_composes_and_reads_its_layout(tmp_path: Path) -> None:
    """The config "Your own data" shows, put in conf/dataset/, composes with the README's
    commands that name it, and its datamodule reads the folder layout the README describes."""
    from hydra import compose, initialize_config_dir

    from piggyback_lab.runs.builders import build_datamodule

    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "dataset" / f"{OWN}.yaml").write_text(own_dataset())
    commands = [c[3:] for c in COMMANDS if c[:3] == ["python", "-m", "src.train"]]
    own = [c for c in commands if f"dataset={OWN}" in c]
    assert own, f"the README shows no command that trains dataset={OWN}"
    classes = yaml.safe_load(own_dataset())["num_classes"]
    data = make_image_folder(tmp_path / "data" / OWN, classes=classes, per_class=2, size=8)
    for args in own:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("config", [*_as_written(args), f"paths.data_dir={tmp_path / 'data'}"])
        assert cfg.dataset.name == OWN and cfg.dataset.root == str(data)
        datamodule = build_datamodule(cfg)
        datamodule.setup()
        assert len(datamodule.class_names) == classes


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
