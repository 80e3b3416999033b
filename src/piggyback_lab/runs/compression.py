"""What the compressed mask coding reaches per task file (``python -m src.compress``): the
bits per weight of each coding against the masks' entropy bound, as the method computes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from piggyback_lab.methods import method_of
from piggyback_lab.methods.multitask import TASK_SUFFIX, task_paths
from piggyback_lab.methods.tasks import read_task
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

HOW = f"pass task files (*{TASK_SUFFIX}) or a folder of them"
TRAIN = "make train writes one to results/tasks"


def task_files(paths: list[str | os.PathLike]) -> list[Path]:
    """The task files named by files and folders (a folder: its *.safetensors, sorted)."""
    try:
        return task_paths(list(paths))
    except UserError as err:
        raise UserError(f"{err}; {HOW} ({TRAIN})") from None


def _read(path: Path) -> TaskFile:
    """``read_task`` whose refusal also says what the command takes."""
    if path.suffix != TASK_SUFFIX:
        raise UserError(f"{path} is not a task file (not *{TASK_SUFFIX}); {HOW}")
    try:
        return read_task(path)
    except UserError as err:
        raise UserError(f"{err}; {HOW}") from None


def task_names(files: list[Path]) -> list[str]:
    """Each file's task name (its stem); the paths themselves when two stems collide."""
    stems = [f.stem for f in files]
    return stems if len(set(stems)) == len(stems) else [str(f) for f in files]


def compression_table(paths: list[str | os.PathLike]) -> list[str]:
    """The report's lines: a header, then one row per task file. Every file is read (and a
    bad one refused) before any line is made."""
    files = task_files(paths)
    tasks = [_read(f) for f in files]
    names = task_names(files)
    w = max(len("task"), *map(len, names))
    lines = [f"{'task':{w}s} {'weights':>10s} {'H(p)':>7s} {'rice':>7s} {'zlib':>7s} {'lzma':>7s}"]
    for name, task in zip(names, tasks, strict=True):
        report = method_of(task).compression(task)
        o = report["overall"] if report else {"n": 0}
        if not o["n"]:
            lines.append(f"{name:{w}s} no masks (a {task.kind} task, not a masked one)")
            continue
        lines.append(
            f"{name:{w}s} {o['n']:>10d} {o['entropy_bpw']:7.4f} {o['rice_bpw']:7.4f} "
            f"{o['zlib_bpw']:7.4f} {o['lzma_bpw']:7.4f}"
        )
    return lines
