"""piggyback_lab: one frozen backbone, many tasks, a 1-bit mask (or another method's small
state) per task.

The Python API, for one's own model and training loop::

    from piggyback_lab import wrap, export_task, fold_task, MultiTaskModel

``method_names()`` lists the methods ``wrap`` takes; ``build_backbone`` builds any backbone
the registry knows (torchvision's and timm's models, the packaged EfficientNet-Lite0).
"""

from piggyback_lab.methods import method_names
from piggyback_lab.methods.api import MultiTaskModel, export_task, fold_task, method_defaults, wrap
from piggyback_lab.models import build_backbone

__all__ = [
    "MultiTaskModel",
    "build_backbone",
    "export_task",
    "fold_task",
    "method_defaults",
    "method_names",
    "wrap",
]
