"""`python -m src.compress`: files and folders, whole task names, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from piggyback_lab.taskfile import pack_bits, write_task_file
from src.compress import main
from tests.conftest import run_module

MODULE = "src.compress"
# Names as training writes them: alike for their first 40+ characters, told apart at the end.
PREFIX = "mini_digits-piggyback-minicnn-binarizer-thr0.005-lr0.0001-seed"
LAYERS = {"features.0": [8, 3, 3, 3], "features.3": [16, 8, 3, 3]}


def write_piggyback_task(path: Path, density: float, seed: int) -> Path:
    """A Piggyback task file with random masks of the given density (piggyback_lab.masking only)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {
        f"mask.{name}": pack_bits(torch.rand(shape, generator=g) < density)
        for name, shape in LAYERS.items()
    }
    tensors["classifier.weight"] = torch.randn(3, 16, generator=g)
    meta = {
        "kind": "piggyback",
        "backbone": "minicnn",
        "fingerprint": "0" * 64,
        "classifier": "classifier",
        "class_names": ["a", "b", "c"],
        "layers": {name: {"shape": shape, "density": density} for name, shape in LAYERS.items()},
    }
    write_task_file(path, tensors, meta)
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    write_piggyback_task(folder / f"{PREFIX}1.safetensors", density=0.1, seed=1)
    write_piggyback_task(folder / f"{PREFIX}0.safetensors", density=0.5, seed=0)
    (folder / "notes.txt").write_text("not a task\n")  # not *.safetensors: left alone
    return folder


def test_folder_reports_every_task_under_its_whole_name(task_dir: Path) -> None:
    result = run_module(MODULE, str(task_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "task"
    assert [line.split()[0] for line in lines[1:]] == [f"{PREFIX}0", f"{PREFIX}1"]  # sorted
    assert len({len(line) for line in lines}) == 1  # the name column fits the longest name
    dense, sparse = (float(line.split()[3]) for line in lines[1:])  # rice bits per weight
    assert sparse < dense  # the 10% dense masks code smaller than the 50% dense ones


def test_files_and_colliding_names(task_dir: Path, tmp_path: Path, capsys) -> None:
    other = write_piggyback_task(tmp_path / f"{PREFIX}0.safetensors", density=0.3, seed=2)
    main([str(task_dir / f"{PREFIX}0.safetensors"), str(other)])
    rows = capsys.readouterr().out.splitlines()[1:]
    # The same task name twice: the rows name the files instead.
    assert [r.split()[0] for r in rows] == [str(task_dir / f"{PREFIX}0.safetensors"), str(other)]


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no tasks here\n")
    text = tmp_path / "notes.txt"
    text.write_text("not a task\n")
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(b"\x00" * 64)
    return {
        "missing": tmp_path / "results" / "tasks",
        "empty_folder": empty,
        "not_safetensors": text,
        "not_a_task_file": fake,
    }


@pytest.mark.parametrize("case", ["missing", "empty_folder", "not_safetensors", "not_a_task_file"])
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    path = _bad_inputs(tmp_path)[case]
    result = run_module(MODULE, str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr and "pass task files" in result.stderr
    assert result.stdout == ""
