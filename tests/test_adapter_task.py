"""A residual-adapter task as stored (piggyback_lab/methods/residual_adapters/task.py), both forms,
without training: each way a file can be corrupt is refused with its message, and an
adapter made for a conv of another shape is refused by fold and host."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import assert_refused_by_fold_and_host, edited_task_file

FORMS = {"parallel_adapters": "parallel.conv", "series_adapters": "series.conv"}


def tiny_net() -> nn.Module:
    """A 3x3 conv with ``same`` padding (where a parallel 1x1 folds exactly) before the norm
    it feeds (where a series adapter goes), then the classifier ``fc``."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, 5, 3, padding=1, bias=False),
            norm=nn.BatchNorm2d(5),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(5, 4),
        )
    )


@pytest.fixture(params=list(FORMS))
def task_file(request: pytest.FixtureRequest, tmp_path: Path) -> TaskFile:
    export_task(wrap(tiny_net(), request.param, classifier="fc"), tmp_path / "task.safetensors")
    return read_task_file(tmp_path / "task.safetensors")


NO_LAYERS = "lists no adapted layers or lacks some"
CORRUPT = {
    "no layers": (None, lambda layers: {}, NO_LAYERS),
    "layers a list of the keys": (None, lambda layers: list(layers), NO_LAYERS),
    "a layer without its adapter": (None, lambda layers: {**layers, "x": [5, 3, 3, 3]}, NO_LAYERS),
    "an adapter without its layer": (lambda t, key: t.update({key + "x": t[key]}), None, NO_LAYERS),
    "a shape of 3 entries": (None, lambda layers: {"conv": [5, 3, 3]}, "shape of layer conv"),
    "a shape of 5 entries": (None, lambda layers: {"conv": [5, 3, 3, 3, 1]}, "shape of layer conv"),
    "a shape not a list": (None, lambda layers: {"conv": (5, 3, 3, 3)}, "shape of layer conv"),
    "an adapter one row short": (
        lambda t, key: t.update({key: t[key][:-1]}),
        None,
        "the adapter of conv is corrupt",
    ),
    "an adapter one row over": (
        lambda t, key: t.update({key: torch.cat([t[key], t[key][:1]])}),
        None,
        "the adapter of conv is corrupt",
    ),
    "an adapter one column short": (
        lambda t, key: t.update({key: t[key][:, :-1]}),
        None,
        "the adapter of conv is corrupt",
    ),
    "an adapter one column over": (
        lambda t, key: t.update({key: torch.cat([t[key], t[key][:, :1]], dim=1)}),
        None,
        "the adapter of conv is corrupt",
    ),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_every_corrupt_adapter_task_is_refused(task_file: TaskFile, case: str) -> None:
    tensors, layers, message = CORRUPT[case]
    key = FORMS[task_file.meta["method"]]
    broken = edited_task_file(task_file, tensors and (lambda t: tensors(t, key)), layers)
    with pytest.raises(UserError, match=f"task file {task_file.path}.*{message}"):
        method_of(broken).check(broken)
    method_of(task_file).check(task_file)  # the file as written passes


@pytest.mark.parametrize("other", [[5, 3, 3, 2], [4, 3, 3, 3], [5, 3, 3, 4], [6, 3, 3, 3]])
def test_an_adapter_for_another_conv_shape_is_refused_by_fold_and_host(
    task_file: TaskFile, other: list[int]
) -> None:
    """Shapes below and above the conv's own ([5, 3, 3, 3]) in list order."""
    broken = edited_task_file(task_file, layers=lambda layers: {**layers, "conv": other})
    message = re.escape("changes weight conv, which this backbone lacks")
    assert_refused_by_fold_and_host(broken, tiny_net, "fc", message)
