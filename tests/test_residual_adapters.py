"""Residual adapters compute what the authors' models.py computes (parallel: conv_k(x) +
conv_1x1(x) with the conv's stride; series: z + conv_1x1(BN(z)) before the conv's norm),
train what their script trains, and fold into the plain ResNet-26 within 1e-5."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from piggyback_lab.methods import method_of
from piggyback_lab.methods.api import export_task, fold_task, wrap
from piggyback_lab.methods.residual_adapters.layer import (
    SeriesAdapter,
    adaptable,
    add_parallel,
    add_series,
    authors_init,
    following_norms,
    parallel_layers,
    series_layers,
    with_parallel,
)
from piggyback_lab.models.resnet26 import ResNet26
from piggyback_lab.models.surgery import stored_weight
from piggyback_lab.taskfile import read_task_file
from piggyback_lab.utils.errors import UserError

FORMS = ["parallel_adapters", "series_adapters"]


def resnet26(seed: int = 0) -> ResNet26:
    torch.manual_seed(seed)
    return ResNet26(num_classes=5, width=0.25)


@pytest.mark.parametrize("stride", [1, 2])
def test_a_parallel_adapter_is_the_authors_sum_with_their_gradients(stride: int) -> None:
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Conv2d(4, 6, 3, stride=stride, padding=1, bias=False))
    holder.add_module("head", nn.Linear(1, 2))
    weight = holder[0].weight.detach().clone()
    task = wrap(holder, "parallel_adapters", classifier="head")
    (adapter,) = parallel_layers(task.model).values()
    x = torch.randn(2, 4, 9, 9)
    ours = holder[0](x)
    authors = F.conv2d(x, weight, stride=stride, padding=1) + F.conv2d(
        x, adapter.adapter, stride=stride
    )  # models.py conv_task.forward: y = conv(x) + parallel_conv(x)
    torch.testing.assert_close(ours, authors, rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(ours.square().sum(), adapter.adapter)
    a = adapter.adapter.detach().requires_grad_(True)
    ref = F.conv2d(x, weight, stride=stride, padding=1) + F.conv2d(x, a, stride=stride)
    (expected,) = torch.autograd.grad(ref.square().sum(), a)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_series_adapters_follow_every_conv_of_resnet26_before_its_norm() -> None:
    model = resnet26()
    task = wrap(model, "series_adapters", classifier="classifier")
    adapters = series_layers(task.model)
    assert len(adapters) == 25  # the stem and the 24 block convs, as with proj='11'
    assert task.norm_after["conv1"] == "bn1"
    assert task.norm_after["layer2.0.conv2"] == "layer2.0.bn2"
    block = task.model.layer1[1].eval()
    x = torch.randn(2, block.conv1.in_channels, 6, 6)
    z = F.conv2d(x, block.conv1.weight, padding=1)
    adapter = block.conv1.series_adapter
    expected = block.bn1(z + adapter.conv(adapter.bn(z)))  # conv1x1 in series mode, then bns
    torch.testing.assert_close(block.bn1(block.conv1(x)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("form", FORMS)
def test_only_the_kxk_convolutions_stay_frozen(form: str) -> None:
    """train_new_task_adapters.py freezes the 3x3 convs; adapters, every BN and the
    classifier train, by the authors' SGD recipe."""
    task = wrap(resnet26(), form, classifier="classifier")
    trained = {id(p) for g in task.trainable_parameters() for p in g["params"]}
    frozen = {n for n, p in task.model.named_parameters() if id(p) not in trained}
    assert frozen and all(p.ndim == 4 and p.shape[-1] == 3 for n, p in
                          task.model.named_parameters() if n in frozen)  # fmt: skip
    assert len(frozen) == 25
    optimizer, schedule = task.recipe()
    assert type(optimizer) is torch.optim.SGD
    assert {(g["lr"], g["momentum"], g["weight_decay"]) for g in optimizer.param_groups} == {
        (0.1, 0.9, 1e-4)
    }
    assert schedule.milestones == {80: 1, 100: 1} and schedule.gamma == 0.1


@pytest.mark.parametrize("form", FORMS)
def test_adapters_start_from_the_authors_initialisation(form: str) -> None:
    task = wrap(resnet26(), form, classifier="classifier")
    layers = parallel_layers(task.model) if form == FORMS[0] else series_layers(task.model)
    weights = [a.adapter if form == FORMS[0] else a.conv.weight for a in layers.values()]
    widest = max(weights, key=lambda w: w.shape[0])  # normal(0, sqrt(2 / out_channels))
    assert widest.std().item() == pytest.approx(math.sqrt(2 / widest.shape[0]), rel=0.1)
    if form == "series_adapters":
        bn = next(iter(layers.values())).bn
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


@pytest.mark.parametrize("form", FORMS)
def test_a_trained_task_folds_into_resnet26_within_1e5(tmp_path: Path, form: str) -> None:
    task = wrap(resnet26(), form, classifier="classifier", num_classes=3)
    optimizer, _ = task.recipe()
    for group in optimizer.param_groups:
        group["lr"] = 0.01
    task.train()
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):  # moves the adapters and every BN's statistics off their start
        x = torch.randn(8, 3, 16, 16, generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(task(x), torch.arange(8) % 3).backward()
        optimizer.step()
    task.eval()
    x = torch.randn(4, 3, 16, 16, generator=generator)
    with torch.no_grad():
        expected = task(x)
    path = tmp_path / f"{form}.safetensors"
    export_task(task, path, ["a", "b", "c"])
    tf = read_task_file(path)
    assert method_of(tf).name == form
    folded = fold_task(resnet26(), path)
    assert {k for k in folded.state_dict()} == {k for k in resnet26().state_dict()}
    if form == "parallel_adapters":  # the folded weight is the one training computed
        assert torch.equal(folded(x), expected)
    else:  # the same map, composed in another order: float32 rounding only ...
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
        task.double()  # ... as float64 shows: the fold is exact algebra
        export_task(task, tmp_path / "float64.safetensors", ["a", "b", "c"])
        tf64 = read_task_file(tmp_path / "float64.safetensors")
        plain64 = method_of(tf64).fold(resnet26().double(), tf64, "classifier").eval()
        with torch.no_grad():
            torch.testing.assert_close(plain64(x.double()), task(x.double()), rtol=0, atol=1e-9)
    stored = sum(t.numel() for k, t in tf.tensors.items() if k.startswith(("parallel.", "series.")))
    assert stored == sum(
        w.numel() for w in (
            [a.adapter for a in parallel_layers(task.model).values()] if form == FORMS[0]
            else [a.conv.weight for a in series_layers(task.model).values()])
    )  # fmt: skip


def test_a_task_for_another_width_is_refused(tmp_path: Path) -> None:
    task = wrap(resnet26(), "parallel_adapters", classifier="classifier")
    path = tmp_path / "t.safetensors"
    export_task(task, path, [str(i) for i in range(5)])
    torch.manual_seed(0)
    other = ResNet26(num_classes=5, width=0.5)
    with pytest.raises(UserError, match="made for other resnet26 weights"):
        fold_task(other, path)
    tf = read_task_file(path)  # past the fingerprint, the shapes are checked too
    with pytest.raises(
        UserError, match=r"changes weight conv1, which this backbone lacks or shapes otherwise"
    ):
        method_of(tf).fold(other, tf, "classifier")


@pytest.mark.parametrize("form", FORMS)
def test_a_backbone_without_a_fitting_conv_is_refused(form: str) -> None:
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UserError, match="no convolution the adapter fits"):
        wrap(mlp, form, classifier="2")


def test_series_adapters_refuse_a_backbone_fx_cannot_trace() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = (
                nn.Conv2d(3, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.Linear(4, 2),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                x = -x
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    with pytest.raises(UserError, match=r"torch\.fx"):
        wrap(copy.deepcopy(Branchy()), "series_adapters", classifier="fc")


# --- the layer's parts, one by one -------------------------------------------------------
def conv(k, padding=0, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(4, 4, k, padding=padding, bias=False, **kwargs)


ADAPTABLE = [  # (module, param, parallel, series)
    (conv(3, 1), "weight", True, True),
    (conv(5, 2), "weight", True, True),
    (conv(1), "weight", False, False),  # a 1x1 would gain an adapter as large as itself
    (conv(3, 0), "weight", False, True),  # not "same" padded: no centre tap to add to
    (conv(3, 2), "weight", False, True),
    (conv(3, (1, 0)), "weight", False, True),
    (conv(3, (0, 1)), "weight", False, True),
    (conv(5, 1), "weight", False, True),
    (conv(2, 1), "weight", False, True),  # even: no centre
    (conv((3, 1), (1, 0)), "weight", False, False),  # not square
    (conv((1, 3), (0, 1)), "weight", False, False),
    (conv((3, 5), (1, 2)), "weight", False, False),
    (conv((5, 3), (2, 1)), "weight", False, False),
    (conv(3, 1, dilation=2), "weight", False, True),
    (conv(3, 1, dilation=(1, 2)), "weight", False, True),
    (conv(3, 1, padding_mode="reflect"), "weight", False, True),
    (conv(3, 1, padding_mode="".join(["ze", "ros"])), "weight", True, True),  # from a config
    (conv(3, 1, groups=2), "weight", False, False),
    (conv(3, 1), "bias", False, False),
    (nn.Linear(4, 4), "weight", False, False),
    (nn.Conv1d(4, 4, 3, padding=1), "weight", False, False),
]


@pytest.mark.parametrize("module, param, parallel, series", ADAPTABLE)
def test_which_convolutions_take_an_adapter(module, param, parallel: bool, series: bool) -> None:
    assert adaptable(module, param, "parallel") is parallel
    assert adaptable(module, param, "series") is series


def test_names_given_as_equal_strings_are_understood() -> None:
    """A parameter or form named by an equal, not identical, string (as a config gives it)."""
    weight, series = "".join(["wei", "ght"]), "".join(["ser", "ies"])
    assert adaptable(conv(3, 0), weight, series) and not adaptable(conv(3, 0), weight, "parallel")


def test_the_authors_initialisation_counts_kernel_taps_and_output_channels() -> None:
    """models.py: normal(0, sqrt(2 / n)), n = kh * kw * out_channels, drawn as torch draws."""
    for shape in [(8, 4, 1, 1), (8, 4, 3, 3), (6, 2, 5, 3)]:
        torch.manual_seed(0)
        ours = authors_init(torch.empty(shape))
        torch.manual_seed(0)
        n = shape[0] * shape[2] * shape[3]
        assert torch.equal(ours, torch.empty(shape).normal_(0.0, math.sqrt(2.0 / n)))


@pytest.mark.parametrize("k", [3, 5, 7])
def test_a_parallel_adapter_lands_on_the_kernels_centre_tap(k: int) -> None:
    weight, adapter = torch.randn(6, 4, k, k), torch.randn(6, 4, 1, 1)
    folded = with_parallel(weight, adapter)
    expected = weight.clone()
    expected[:, :, k // 2, k // 2] += adapter[:, :, 0, 0]
    assert torch.equal(folded, expected)


def test_adding_adapters_freezes_the_convolutions_they_adapt() -> None:
    for add in (add_parallel, add_series):
        model = nn.Sequential(conv(3, 1), nn.BatchNorm2d(4), conv(1), nn.BatchNorm2d(4))
        add(model, "classifier")
        assert not stored_weight(model[0], "weight").requires_grad  # adapted: frozen
        assert model[2].weight.requires_grad  # a 1x1, not adapted: as it was
        adapters = parallel_layers(model) if add is add_parallel else series_layers(model)
        assert list(adapters) == ["0"]
        assert all(p.requires_grad for a in adapters.values() for p in a.parameters())


def test_a_series_adapter_as_a_linear_map_carries_no_graph() -> None:
    adapter = SeriesAdapter(4).eval()
    nn.init.normal_(adapter.bn.weight)
    matrix, offset = adapter.as_linear()
    assert not matrix.requires_grad and not offset.requires_grad
    z = torch.randn(2, 4, 3, 3)
    expected = torch.einsum("oc,bchw->bohw", matrix, z) + offset[None, :, None, None]
    torch.testing.assert_close(adapter(z), expected, rtol=1e-5, atol=1e-6)


class Pairs(nn.Module):
    """One conv whose output only a tracking BatchNorm reads, and the cases that are not."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(4)  # reads the input, not a conv
        self.paired, self.bn1 = conv(3, 1), nn.BatchNorm2d(4)
        self.shared, self.bn2 = conv(3, 1), nn.BatchNorm2d(4)  # its output is read twice
        self.relu_first, self.bn3 = conv(3, 1), nn.BatchNorm2d(4)  # a ReLU comes between
        self.untracked, self.bn4 = conv(3, 1), nn.BatchNorm2d(4, track_running_stats=False)
        self.pointwise, self.bn5 = conv(1), nn.BatchNorm2d(4)  # a 1x1: not adaptable
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.paired(self.bn_in(x)))
        s = self.shared(x)
        x = self.bn2(s) + s
        x = self.bn3(F.relu(self.relu_first(x)))
        x = self.bn5(self.pointwise(self.bn4(self.untracked(x))))
        return self.classifier(x.mean((2, 3)))


def test_series_adapters_go_only_where_a_tracking_norm_alone_reads_the_conv() -> None:
    assert following_norms(Pairs(), "classifier") == {"paired": "bn1"}


class NormAct(nn.Module):
    """A 3x3 conv into timm's BatchNormAct2d (a BatchNorm2d subclass: norm, then ReLU), as
    timm's EfficientNets and MobileNets build their stems."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import BatchNormAct2d

        self.stem, self.bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), BatchNormAct2d(4)
        self.classifier = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bn(self.stem(x)).mean((2, 3)))


def test_a_series_adapter_finds_timms_norm_with_its_activation_and_folds_into_it(
    tmp_path: Path,
) -> None:
    assert following_norms(NormAct(), "classifier") == {"stem": "bn"}  # was {}: refused
    torch.manual_seed(0)
    task = wrap(NormAct(), "series_adapters", classifier="classifier", num_classes=2)
    task.train()
    optimizer, _ = task.recipe()
    x = torch.randn(8, 3, 8, 8)
    for _ in range(3):  # moves the adapter and the norms' statistics off their start
        optimizer.zero_grad()
        F.cross_entropy(task(x), torch.arange(8) % 2).backward()
        optimizer.step()
    task.eval()
    with torch.no_grad():
        expected = task(x)
    export_task(task, tmp_path / "t.safetensors", ["a", "b"])
    torch.manual_seed(0)
    folded = fold_task(NormAct(), tmp_path / "t.safetensors")
    torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
