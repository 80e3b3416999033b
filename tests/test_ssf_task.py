"""An SSF task as stored (piggyback_lab/methods/ssf/task.py), without training: folding and hosting
give the trained network's outputs (a CNN with a norm, a ViT with attention), a task stores
a scale per adapted weight and trains only scales, shifts and the classifier, a scale that
is not a vector is refused, and so is one made for another number of output channels."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.methods.ssf.layer import add_ssf, ssf_layers
from piggyback_lab.models import build_backbone
from piggyback_lab.taskfile import TaskFile, read_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import assert_folded_and_hosted_match, assert_refused_by_fold_and_host

WIDE = 300  # above CPython's cached small ints (-5..256): `is` on two counts is False here


def wide_net() -> nn.Module:
    """conv (300 x 3 x 3 x 3: channels out != in != kernel) -> norm -> Linear (7 x 300) -> fc."""
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(3, WIDE, 3),
            norm=nn.BatchNorm2d(WIDE),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            mid=nn.Linear(WIDE, 7),
            fc=nn.Linear(7, 4),
        )
    )


def mini_vit() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone("minivit", None, 4)


NETS = {"cnn": (wide_net, "fc", (3, 3, 8, 8)), "vit": (mini_vit, "heads.head", (2, 3, 32, 32))}


@pytest.fixture
def trained(tmp_path: Path) -> tuple:
    """A wrapped net whose scales and shifts are not the identity's 1 and 0."""
    return trained_ssf(tmp_path, wide_net, "fc")


def trained_ssf(tmp_path: Path, net, classifier: str) -> tuple:
    task = wrap(net(), "ssf", classifier=classifier, backbone="sequential")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for *_, ssf in ssf_layers(task.model).values():
            ssf.scale.copy_(torch.rand(ssf.scale.shape, generator=generator) + 0.5)
            ssf.shift.copy_(torch.randn(ssf.shift.shape, generator=generator))
    path = tmp_path / "ssf.safetensors"
    export_task(task, path)
    return task, path


@pytest.fixture
def task_file(trained) -> TaskFile:
    return read_task_file(trained[1])


@pytest.mark.parametrize("kind", NETS)
def test_folding_and_hosting_give_the_trained_networks_outputs(tmp_path: Path, kind) -> None:
    net, classifier, shape = NETS[kind]
    task, path = trained_ssf(tmp_path, net, classifier)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert_folded_and_hosted_match(task, path, net, classifier, x)


def test_a_task_stores_a_scale_per_weight_and_trains_only_scales_shifts_and_classifier(
    trained,
) -> None:
    task, path = trained
    tf = read_task_file(path)
    assert sorted(method_of(tf).scales(tf)) == ["conv", "mid"]  # the norm: in its own state
    assert sorted(k for k in tf.tensors if k.startswith("ssf_state.")) == [
        "ssf_state.conv.bias", "ssf_state.mid.bias", "ssf_state.norm.bias",
        "ssf_state.norm.weight",
    ]  # fmt: skip
    trained_names = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trained_names and all(n.endswith((".scale", ".shift")) or n.startswith("fc.")
                                 for n in trained_names)  # fmt: skip


def test_a_norm_without_a_bias_is_left_alone() -> None:
    holder = nn.Sequential(OrderedDict(norm=nn.LayerNorm(4, bias=False), head=nn.Linear(4, 2)))
    assert add_ssf(holder, "head") == []


def replaced_scale(tf: TaskFile, key: str, scale: torch.Tensor) -> TaskFile:
    return TaskFile(path=tf.path, meta=tf.meta, tensors={**tf.tensors, f"ssf_scale.{key}": scale})


@pytest.mark.parametrize("shape", [(), (1, WIDE), (WIDE, 1)])
def test_a_scale_that_is_not_a_vector_is_refused(task_file: TaskFile, shape: tuple) -> None:
    broken = replaced_scale(task_file, "conv", torch.ones(shape))
    with pytest.raises(UserError, match="an SSF scale is not a vector"):
        method_of(broken).check(broken)
    method_of(task_file).check(task_file)  # the file as written passes


@pytest.mark.parametrize("channels", [WIDE - 1, WIDE + 1])
def test_a_scale_for_another_channel_count_is_refused_by_fold_and_host(
    task_file: TaskFile, channels: int
) -> None:
    broken = replaced_scale(task_file, "conv", torch.ones(channels))
    method_of(broken).check(broken)  # well-formed: only the backbone can tell
    message = "changes weight conv, which this backbone lacks"
    assert_refused_by_fold_and_host(broken, wide_net, "fc", message)
