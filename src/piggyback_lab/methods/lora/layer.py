"""LoRA as a parametrization: W -> W + (lora_alpha / r) * (B @ A).view_as(W).

peft adds the adapter's output beside the layer's (base(x) + B(A(drop(x))) * scaling); here
the update is added to the weight, as the masks are multiplied into it, so that one
mechanism covers Conv, Linear and nn.MultiheadAttention's packed ``in_proj_weight`` (which
the attention kernel reads directly), and the trained network *is* the folded one: folding
computes the same sum once. A and B have peft's shapes and initialisation (A: Kaiming
uniform with a = sqrt(5), as nn.Linear; B: zeros, so training starts at the backbone), with
a convolution's A flattened over its kernel: (r, in x kh x kw). The same weights give
peft's outputs and gradients (tests/test_lora.py). peft's input dropout has no weight form,
so ``lora_dropout`` must be 0 (peft's default).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.models.surgery import parametrized_weights, prunable_slots, stored_weight


class LoraDelta(nn.Module):
    """The parametrization of one frozen weight; ``delta()`` is its update."""

    def __init__(self, weight: torch.Tensor, r: int, lora_alpha: float) -> None:
        super().__init__()
        weight.requires_grad_(False)
        self.shape = tuple(weight.shape)
        self.scaling = lora_alpha / r
        a = torch.empty(r, weight[0].numel(), dtype=weight.dtype, device=weight.device)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(weight.new_zeros(weight.shape[0], r))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return folded(weight, self.lora_A, self.lora_B, self.scaling)


def folded(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """W + scaling * B A: the weight in training, and the weight a task folds in."""
    return weight + (lora_b @ lora_a).view(weight.shape) * scaling


def targeted(module_name: str, target_modules: str | Sequence[str] | None) -> bool:
    """peft's matching: None, every prunable weight; a string, a regex the module's name
    matches in full; a list, names the module's name equals or ends with (after a dot)."""
    if target_modules is None:
        return True
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


def add_lora(
    model: nn.Module,
    classifier: str,
    r: int,
    lora_alpha: float,
    target_modules: str | Sequence[str] | None = None,
) -> list[str]:
    """Put a LoRA update on every targeted prunable weight outside ``classifier``, in
    place; returns their keys."""
    keys = []
    for key, module, param in list(prunable_slots(model, classifier)):
        name = key if param == "weight" else key.rpartition(".")[0]
        if targeted(name, target_modules):
            delta = LoraDelta(stored_weight(module, param), r, lora_alpha)
            parametrize.register_parametrization(module, param, delta)
            keys.append(key)
    return keys


def lora_layers(model: nn.Module) -> dict[str, LoraDelta]:
    """The LoRA update of every adapted weight, by key."""
    return parametrized_weights(model, LoraDelta)
