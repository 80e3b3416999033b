"""The methods on one's own model and training loop: no Lightning Trainer, no Hydra.

peft's ``get_peft_model`` / ``save_pretrained`` / ``from_pretrained`` are the model::

    from piggyback_lab.methods.api import wrap, export_task, fold_task, MultiTaskModel

    task = wrap(torchvision.models.resnet18(), "piggyback", classifier="fc", num_classes=10)
    optimizer, schedule = task.recipe()              # the published recipe, or your own
    for x, y in loader:                              # any loop
        loss = F.cross_entropy(task(x), y)
        ...
    export_task(task, "cub.safetensors", class_names)   # 1 bit per weight + classifier
    model = fold_task(resnet18_again, "cub.safetensors")  # a plain network, task folded in
    host = MultiTaskModel("resnet18", None, ["cub.safetensors"], model=resnet18_again)

A method's settings default to its config dataclass (``PiggybackConfig`` in
piggyback_lab/methods/piggyback/config.py), the schema ``src.train`` composes
conf/method/<name>.yaml from: the same defaults, with no conf/ folder needed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from typing import Any

from torch import nn

from piggyback_lab.methods.base import OptimizerFactory, TaskModule
from piggyback_lab.methods.config import RUN_KEYS, config_named
from piggyback_lab.methods.multitask import MultiTaskModel
from piggyback_lab.methods.ranges import check_settings
from piggyback_lab.methods.tasks import apply_task, read_task
from piggyback_lab.models.surgery import replace_module
from piggyback_lab.taskfile import backbone_fingerprint, check_compatible
from piggyback_lab.utils.errors import UserError, check_integer

# Besides the run's own keys (RUN_KEYS), which module and the optimizer (``recipe()`` builds
# it) are never passed to the module's settings.
NOT_SETTINGS = (*RUN_KEYS, "_target_", "optimizer")

__all__ = ["MultiTaskModel", "export_task", "fold_task", "method_defaults", "wrap"]


def _target(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def method_config(method: str) -> Any:
    """The default settings of ``method=<method>``: its registered config dataclass (the
    same schema ``src.train`` composes, e.g. ``PiggybackConfig()``); read from the method's
    package, so it needs no conf/ folder (a wheel has none)."""
    return config_named(method)()


def method_defaults(method: str) -> tuple[type[TaskModule], OptimizerFactory, dict[str, Any]]:
    """(module class, optimizer factory, settings) of ``method``'s config: the settings are
    its flat keys but the run's own (``RUN_KEYS``); nested nodes (PackNet's
    ``base_retrain``) belong to the run layer's sequence and are left out."""
    conf = dataclasses.asdict(method_config(method))
    optimizer = dict(conf.get("optimizer") or {})
    factory = functools.partial(
        _target(optimizer.pop("_target_")),
        **{k: v for k, v in optimizer.items() if not k.startswith("_")},
    )
    settings = {k: v for k, v in conf.items() if k not in NOT_SETTINGS and not isinstance(v, dict)}
    return _target(conf["_target_"]), factory, settings


def linear_classifier(model: nn.Module, classifier: str) -> nn.Linear:
    """The Linear layer at ``classifier`` in ``model``; a path that names none is a
    UserError listing the model's Linear layers (the last is usually the classifier)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        layer = model.get_submodule(classifier) if isinstance(classifier, str) else None
    except AttributeError:
        layer = None
    if isinstance(layer, nn.Linear):
        return layer
    found = "no layer" if layer is None else f"a {type(layer).__name__}, not a Linear layer,"
    listed = ", ".join(linears[-5:]) if linears else "none"
    raise UserError(
        f"classifier={classifier!r} names {found} of this {type(model).__name__}; pass the "
        f"path of its Linear classifier (its last Linear layers: {listed})"
    )


def wrap(
    model: nn.Module,
    method: str = "piggyback",
    *,
    classifier: str,
    num_classes: int | None = None,
    backbone: str | None = None,
    **settings: Any,
) -> TaskModule:
    """``model`` under ``method`` (its config's defaults, ``settings`` overriding them).

    ``classifier``: the path of the model's last Linear layer; ``num_classes`` replaces it
    by a fresh one of that size. ``backbone`` names the model in the task file (default:
    the model's class name). The result is an nn.Module: call it, optimise what it trains
    (``trainable_parameters()`` or ``recipe()``), then ``export_task``.
    """
    cls, optimizer, defaults = method_defaults(method)
    check_settings(settings)  # lr=-1 would train by gradient ascent
    old = linear_classifier(model, classifier)
    if num_classes is not None:
        check_integer("num_classes", num_classes, 2)
        replace_module(model, classifier, nn.Linear(old.in_features, num_classes))
    head = model.get_submodule(classifier)
    return cls(
        model=model,
        classifier=classifier,
        backbone=backbone or type(model).__name__.lower(),
        num_classes=head.out_features,
        optimizer=optimizer,
        **{**defaults, **settings},
    )


def export_task(
    task: TaskModule,
    path: str | os.PathLike,
    class_names: list[str] | None = None,
    transforms: dict[str, Any] | None = None,
    **meta: Any,
) -> int:
    """Write ``task``'s task file (what the method stores, tied to the backbone's
    fingerprint); returns its size in bytes. ``transforms``: how its images are prepared
    for testing (``{"size": 64}``; ``style`` resize_exact, or resize_crop as the ImageNet
    test crop), so ``src.predict`` and ``src.eval`` serve the file as it is. ``meta``: more
    metadata (e.g. ``dataset``, a conf/dataset name for ``src.eval``)."""
    head = task.head
    names = list(class_names) if class_names is not None else []
    if names and len(names) != head.out_features:
        raise UserError(f"{len(names)} class names for {head.out_features} classifier outputs")
    full = {"method": task.task_method.name, "num_classes": head.out_features, **meta}
    if transforms is not None:
        check_integer("transforms.size", transforms.get("size"))
        full["transforms"] = {"style": "resize_exact", "flip": False, **transforms}
    return task.export_task(path, {**full, "class_names": names})


def fold_task(
    model: nn.Module, path: str | os.PathLike, classifier: str | None = None
) -> nn.Module:
    """Fold a task file into ``model`` (the plain backbone it was trained on) in place and
    return it, in eval mode: one network that costs what the backbone costs."""
    tf = read_task(path)
    classifier = classifier or tf.meta["classifier"]
    check_compatible(tf, tf.meta["backbone"], backbone_fingerprint(model, classifier))
    return apply_task(model, tf, classifier).eval()
