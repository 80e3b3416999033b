"""Reading and folding stored tasks of any registered method.

``read_task`` is ``read_task_file`` (digest, format) plus the checks of the method that
stores the file's kind; ``apply_task`` folds a task into a plain backbone through its method.
"""

from __future__ import annotations

import os

from torch import nn

from piggyback_lab.methods.registry import method_of
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError

REQUIRED_META = ("kind", "backbone", "fingerprint")


def read_task(path: str | os.PathLike) -> TaskFile:
    """A verified task file whose contents its method accepts; anything else a UserError."""
    tf = read_task_file(path)
    missing = [key for key in REQUIRED_META if not isinstance(tf.meta.get(key), str)]
    if missing:
        raise UserError(f"task file {tf.path} has no {', '.join(missing)}; it is corrupt")
    method_of(tf).check(tf)
    return tf


def apply_task(model: nn.Module, task: TaskFile, classifier: str) -> nn.Module:
    """Fold a verified task into a plain backbone in place (``check_compatible`` first)."""
    return method_of(task).fold(model, task, classifier)
