"""piggyback_lab: one frozen backbone, many tasks, a 1-bit mask (or another method's small
state) per task.

The Python API, for one's own model and training loop::

    from piggyback_lab import wrap, export_task, fold_task, MultiTaskModel

``method_names()`` lists the methods ``wrap`` takes.
"""

from piggyback_lab.methods import method_names
from piggyback_lab.methods.api import MultiTaskModel, export_task, fold_task, method_defaults, wrap

__all__ = ["MultiTaskModel", "export_task", "fold_task", "method_defaults", "method_names", "wrap"]
