"""Training methods, one package each (src/piggyback_lab/methods/<name>/: its LightningModule, its
layers, how its tasks are stored, one registration). They see a model and batches, never a
dataset. Adding a method is one package here (its settings a dataclass, registered with
``register_config``) plus one config in conf/method/ that names that schema.

Importing this package registers every method package in it, and so every method's config
schema in Hydra's ConfigStore: compose a config after importing it.
"""

import importlib
import pkgutil

from piggyback_lab.methods.config import (
    check_schema_keys,
    config_named,
    config_names,
    register_config,
)
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

__all__ = [
    "HostedTask",
    "TaskMethod",
    "check_schema_keys",
    "config_named",
    "config_names",
    "method_named",
    "method_names",
    "method_of",
    "register",
    "register_config",
]
