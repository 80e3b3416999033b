"""SSF as parametrizations: y = scale * layer(x) + shift, per output channel, written into
the layer's own weight and bias (W -> scale * W, b -> scale * b + shift), so the trained
network is the folded one and any layer type with a weight and a bias takes it unchanged.

Which layers: every Conv, Linear and attention projection that has a bias, and every norm
layer with affine parameters (official SSF: after each linear, convolution and norm of its
timm models). A convolution without a bias (ResNets, VGG-BN) gets none of its own: the norm
after it runs in eval mode, a per-channel affine map, so the SSF after that norm already
expresses any scale and shift at that point.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.models.surgery import norm_layers, prunable_slots, stored_weight

BIAS_OF = {"weight": "bias", "in_proj_weight": "in_proj_bias"}


def channel_view(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-output-channel vector shaped to broadcast over ``like`` (dim 0 is channels)."""
    return vector.view(-1, *([1] * (like.ndim - 1)))


class ScaledWeight(nn.Module):
    """W -> scale * W; ``scale`` is the layer's SSFBias's parameter, shared."""

    def __init__(self, bias: SSFBias) -> None:
        super().__init__()
        self.__dict__["ssf"] = bias  # not a submodule: its parameters are registered once

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return channel_view(self.ssf.scale, weight) * weight


class SSFBias(nn.Module):
    """b -> scale * b + shift; owns the layer's scale and shift (start: 1 and 0)."""

    def __init__(self, bias: torch.Tensor) -> None:
        super().__init__()
        bias.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones_like(bias))
        self.shift = nn.Parameter(torch.zeros_like(bias))

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return folded_bias(bias, self.scale, self.shift)


def folded_bias(bias: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return scale * bias + shift


def folded_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return channel_view(scale, weight) * weight


def _has(module: nn.Module, name: str) -> bool:
    return module._parameters.get(name) is not None or parametrize.is_parametrized(module, name)


def ssf_slots(model: nn.Module, classifier: str) -> list[tuple[str, nn.Module, str, str, bool]]:
    """(key, module, weight name, bias name, prunable) of every layer SSF adapts: ``key`` is
    the prunable weight's key (``prunable``: a Conv, Linear or attention weight) or the
    norm's name."""
    slots = []
    for key, module, param in prunable_slots(model, classifier):
        bias = BIAS_OF.get(param)
        if bias is not None and _has(module, bias):
            slots.append((key, module, param, bias, True))
    for name, norm in norm_layers(model).items():
        if _has(norm, "weight") and _has(norm, "bias"):
            slots.append((name, norm, "weight", "bias", False))
    return slots


def state_key(key: str, param: str, name: str) -> str:
    """The state_dict key of a slot's parameter ``name`` (``param`` is its weight's)."""
    module = key if param == "weight" else key.rpartition(".")[0]
    return f"{module}.{name}" if module else name


def add_ssf(model: nn.Module, classifier: str) -> list[str]:
    """Put a scale and shift after every adaptable layer outside ``classifier``, in place."""
    keys = []
    for key, module, weight, bias, _ in ssf_slots(model, classifier):
        ssf = SSFBias(module._parameters[bias])
        stored_weight(module, weight).requires_grad_(False)
        parametrize.register_parametrization(module, bias, ssf)
        parametrize.register_parametrization(module, weight, ScaledWeight(ssf))
        keys.append(key)
    return keys


def ssf_layers(model: nn.Module) -> dict[str, tuple[nn.Module, str, str, bool, SSFBias]]:
    """Every adapted layer by key: (module, weight name, bias name, prunable, its SSF)."""
    return {
        key: (module, weight, bias, prunable, module.parametrizations[bias][0])
        for key, module, weight, bias, prunable in ssf_slots(model, classifier="")
        if parametrize.is_parametrized(module, bias)
        and isinstance(module.parametrizations[bias][0], SSFBias)
    }
