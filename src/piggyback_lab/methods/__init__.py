"""Training methods, one package each (src/piggyback_lab/methods/<name>/: its LightningModule, its
layers, how its tasks are stored, one registration). They see a model and batches, never a
dataset. Adding a method is one package here plus one config in conf/method/.

Importing this package registers every method package in it.
"""

import importlib
import pkgutil

from piggyback_lab.methods.registry import (
    HostedTask,
    TaskMethod,
    method_named,
    method_names,
    method_of,
    register,
)

for _package in pkgutil.iter_modules(__path__):
    if _package.ispkg:
        importlib.import_module(f"{__name__}.{_package.name}")

__all__ = ["HostedTask", "TaskMethod", "method_named", "method_names", "method_of", "register"]
