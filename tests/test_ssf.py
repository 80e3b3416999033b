"""SSF computes scale * layer(x) + shift per output channel, starts at the backbone bit for
bit, adapts every layer with a bias and every norm (a bias-free convolution through the
norm after it), and keeps the norms' statistics."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from piggyback_lab.methods.api import wrap
from piggyback_lab.methods.ssf.layer import add_ssf, ssf_layers
from piggyback_lab.utils.errors import UserError


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Conv2d(3, 4, 3), torch.randn(2, 3, 5, 5)),
        (nn.Linear(6, 4), torch.randn(2, 6)),
        (nn.BatchNorm2d(4).eval(), torch.randn(2, 4, 3, 3)),
        (nn.LayerNorm(4), torch.randn(2, 4)),
    ],
)
def test_each_adapted_layer_is_scaled_and_shifted_per_channel(layer: nn.Module, x) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        plain = copy.deepcopy(layer)(x)
    holder = nn.Sequential(OrderedDict(layer=layer, head=nn.Linear(1, 1)))
    assert add_ssf(holder, "head") == ["layer"]
    (*_, ssf) = ssf_layers(holder)["layer"]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ssf.scale.copy_(torch.rand(ssf.scale.shape, generator=generator) + 0.5)
        ssf.shift.copy_(torch.randn(ssf.shift.shape, generator=generator))
        out = layer(x)
    channel = -1 if isinstance(layer, (nn.Linear, nn.LayerNorm)) else 1
    shape = [1] * x.ndim
    shape[channel] = -1
    expected = ssf.scale.view(shape) * plain + ssf.shift.view(shape)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_it_starts_at_the_backbone_and_keeps_norm_statistics() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    task = wrap(model, "ssf", classifier="fc")
    layers = ssf_layers(task.model)
    norms = {n for n, m in task.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert set(layers) == norms  # resnet's convolutions have no bias: their norms carry SSF
    task.eval()
    with torch.no_grad():
        assert torch.equal(task(x), expected)  # scale 1, shift 0: bit for bit
    stats = task.model.bn1.running_mean.clone()
    task.train()
    task(x).sum().backward()
    assert torch.equal(task.model.bn1.running_mean, stats)
    trained = {id(p) for g in task.trainable_parameters() for p in g["params"]}
    assert len(trained) == 2 * len(layers) + 2  # a scale and a shift per layer, the head


def test_norm_training_is_refused() -> None:
    with pytest.raises(UserError, match="train_bn=false"):
        wrap(torchvision.models.resnet18(), "ssf", classifier="fc", train_bn=True)
